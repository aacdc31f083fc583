"""The training loop: detectron2's DefaultTrainer with iuq_d2's data, evaluation and
checkpointing."""

import logging
import os
import weakref

import torch
from detectron2.data import (
    DatasetCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.env import TORCH_VERSION
from detectron2.utils.logger import setup_logger

from ..data.build import check_mapper_views, train_mapper_class
from ..data.datasets import CustomCocoLoader
from ..data.mapper import CondInstDatasetMapper
from .checkpoint import AtomicCheckpointer


class Trainer(DefaultTrainer):
    """Differs from DefaultTrainer in its construction only: DDP without ``device_ids`` on CPU
    (so ``--num-gpus N`` runs N gloo processes on a machine without GPUs),
    ``find_unused_parameters`` from the config, and atomic checkpoints."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_gpu = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        model = create_ddp_model(
            model,
            broadcast_buffers=False,
            device_ids=[comm.get_local_rank()] if on_gpu else None,
            find_unused_parameters=cfg.MODEL.DDP_FIND_UNUSED_PARAMETERS,
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        """detectron2's SGD, or AdamW (SOLVER.OPTIMIZER) with the same parameter groups,
        learning rate schedule and gradient clipping.

        AdamW uses torch's fused kernel, which updates all parameters in one pass: on the demo
        model on CPU a step takes 3.9 ms against 12.7 ms for the per-tensor loop that torch
        picks by default there. torch before 2.4 has no fused CPU kernel and keeps its default.
        Not with AMP and SOLVER.CLIP_GRADIENTS: the fused kernel tells GradScaler that it
        unscales the gradients itself, so GradScaler skips ``unscale_`` and the clipping (which
        runs before the kernel) would see gradients still multiplied by the loss scale.
        """
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            return super().build_optimizer(cfg, model)
        if name != "ADAMW":
            raise ValueError(
                f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}"
            )
        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        clips_scaled = cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.ENABLED
        fused = True if TORCH_VERSION >= (2, 4) and not clips_scaled else None
        return maybe_add_gradient_clipping(cfg, torch.optim.AdamW)(
            params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=fused
        )

    @classmethod
    def build_train_loader(cls, cfg):
        """The mapper of INPUT.DATASET_MAPPER_NAME, checked against the model (see
        ``check_mapper_views``). When it makes views in MODEL.IUQ.EQUI.MODE "paired", the views
        count towards SOLVER.IMS_PER_BATCH, so half as many dataset images are drawn."""
        mapper_class = train_mapper_class(cfg)
        check_mapper_views(cfg, mapper_class)
        batch_size = cfg.SOLVER.IMS_PER_BATCH
        if mapper_class.makes_views and cfg.MODEL.IUQ.EQUI.MODE == "paired":
            if batch_size % (2 * comm.get_world_size()) != 0:
                raise ValueError(
                    f"SOLVER.IMS_PER_BATCH ({batch_size}) must be a multiple of "
                    f"2 x {comm.get_world_size()} processes with MODEL.IUQ.EQUI.MODE "
                    "'paired' (each image brings its view)"
                )
            batch_size //= 2
        return build_detection_train_loader(
            cfg, mapper=mapper_class(cfg, is_train=True), total_batch_size=batch_size
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """CondInst's mapper whatever INPUT.DATASET_MAPPER_NAME says: views are training-only
        (at test time IUQDatasetMapper is this mapper)."""
        mapper = CondInstDatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Box and mask AP; box AP alone on a box-only dataset (no masks to score against)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        loader = DatasetCatalog[dataset_name]
        box_only = isinstance(loader, CustomCocoLoader) and loader.first_maskless_annotation()
        tasks = ("bbox",) if box_only else ("bbox", "segm")
        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_folder)
