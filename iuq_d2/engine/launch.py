"""Entry points shared by ``train_net.py`` and the Slurm launcher."""
import argparse
import logging

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

from ..config import add_condinst_config, add_iuq_config
from ..data import check_num_classes, register_custom_coco
from .checkpoint import AtomicCheckpointer
from .trainer import Trainer

logger = logging.getLogger("iuq_d2")


def build_argument_parser() -> argparse.ArgumentParser:
    return default_argument_parser(
        epilog="Example: python train_net.py --config-file configs/Demo/shapes_CondInst.yaml "
        "SOLVER.MAX_ITER 100"
    )


def get_config() -> CfgNode:
    """detectron2's defaults plus every key iuq_d2 reads."""
    cfg = get_cfg()
    add_condinst_config(cfg)
    add_iuq_config(cfg)
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    cfg = get_config()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if torch.device(cfg.MODEL.DEVICE).type == "cuda" and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
        raise ValueError("SOLVER.AMP.ENABLED True needs a CUDA device; this run is on the CPU")
    register_custom_coco(cfg)
    check_num_classes(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    logger.info(f"Running on {cfg.MODEL.DEVICE}")
    return cfg


def main(args: argparse.Namespace):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        AtomicCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def run(args: argparse.Namespace):
    """Start ``args.num_gpus`` processes on this machine (gloo on CPU) and run ``main`` in each."""
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
