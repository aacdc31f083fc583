"""Entry points shared by ``train_net.py`` and the Slurm launcher."""
import argparse
import logging
import multiprocessing
import os
import sys

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

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
    if cfg.MODEL.DEVICE == "cpu":
        set_cpu_threads(cfg.DATALOADER.NUM_WORKERS)
    logger.info(f"Running on {cfg.MODEL.DEVICE} with {torch.get_num_threads()} intra-op threads")
    return cfg


def set_cpu_threads(num_workers: int) -> None:
    """Give each local training process an equal share of the cores left by its data-loader
    workers, unless OMP_NUM_THREADS says otherwise.

    torch's default (one thread per core in every process) oversubscribes the cores as soon as
    loader workers or a second process run beside it; OpenMP threads then spin-wait on each
    other. Measured on a 2-core machine: 0.31 s per demo step with 1 thread, 0.4-8 s with 2.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // comm.get_local_size() - num_workers))


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


def leave_spawned_process() -> None:
    """End a process that ``launch()`` spawned, skipping the interpreter's teardown.

    torch's teardown at exit sometimes aborts a gloo process after training has completed
    ("terminate called without an active exception", about 1 run in 20 with 2 CPU processes),
    which makes ``launch()`` report a failure. In the main process this does nothing.
    """
    if multiprocessing.parent_process() is None:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _main_in_worker(args: argparse.Namespace) -> None:
    main(args)
    leave_spawned_process()


def run(args: argparse.Namespace):
    """Start ``args.num_gpus`` processes on this machine (gloo on CPU) and run ``main`` in each."""
    return launch(
        _main_in_worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
