"""train_net.py's command line: parse it, set up a run, train or evaluate, in one or more processes.

The Slurm launcher (:mod:`iuq_d2.engine.slurm`) runs the same :func:`run` on every node.
"""

import argparse
import json
import logging
import multiprocessing
import os
import signal
import sys
from datetime import timedelta
from typing import Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .checkpoint import StrictCheckpointer
from .config_loader import load_config, merge_config
from .cpu_threads import set_cpu_threads
from .trainer import Trainer

logger = logging.getLogger(__name__)


def _seconds(text: str) -> float:
    """A positive number of seconds, or argparse's error."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return seconds


def build_argument_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(
        epilog="Example: python train_net.py --config-file configs/Demo/shapes_CondInst.yaml "
        "SOLVER.MAX_ITER 100"
    )
    parser.add_argument(
        "--dist-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="timeout of the process group's collectives (gloo, NCCL) when there are several "
        f"processes: a rank that waits longer for another one fails instead of hanging "
        f"(default {DEFAULT_TIMEOUT.total_seconds():.0f}, detectron2's). It must exceed the "
        "longest time a rank can spend alone: evaluation, a checkpoint, the first data loading",
    )
    return parser


def dist_timeout(args: argparse.Namespace) -> timedelta:
    """The process-group timeout of ``args`` (``--dist-timeout``), detectron2's by default."""
    seconds: Optional[float] = getattr(args, "dist_timeout", None)
    return DEFAULT_TIMEOUT if seconds is None else timedelta(seconds=seconds)


def setup(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``args``, with detectron2's logging, output folder and seeding set
    up, and this process's CPU threads chosen."""
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    if cfg.MODEL.DEVICE == "cpu":
        set_cpu_threads(cfg.DATALOADER.NUM_WORKERS)
    logger.info(f"Running on {cfg.MODEL.DEVICE} with {torch.get_num_threads()} intra-op threads")
    return cfg


def write_eval_results(results, path: str) -> None:
    """``--eval-only``'s metrics ({dataset: {task: {metric: value}}}, or {task: ...} for one
    test set) as json, for scripts that would otherwise parse the log."""
    with PathManager.open(path, "w") as f:
        json.dump(results, f, indent=1)
    logger.info(f"Evaluation results written to {path}")


def main(args: argparse.Namespace):
    """Train, or with ``--eval-only`` evaluate, in this process; the evaluation results.

    The weights to evaluate must all be in the checkpoint (:class:`StrictCheckpointer`);
    training starts from whatever MODEL.WEIGHTS holds, as detectron2's does.
    """
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = StrictCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        if comm.is_main_process():
            write_eval_results(results, os.path.join(cfg.OUTPUT_DIR, "eval_results.json"))
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _main_in_worker(args: argparse.Namespace, ignored_signals: Sequence[signal.Signals]) -> None:
    """:func:`main` in one process of :func:`run`.

    A process that ``launch()`` spawned ignores ``ignored_signals`` (the Slurm launcher's reason:
    :data:`iuq_d2.engine.slurm.node.WORKER_IGNORED_SIGNALS`) and ends without the interpreter's
    teardown: torch's at exit sometimes aborts a gloo process after training has completed
    ("terminate called without an active exception", about 1 run in 20 with 2 CPU processes),
    which makes ``launch()`` report a failure. The main process keeps both.
    """
    spawned = multiprocessing.parent_process() is not None
    if spawned:
        for sig in ignored_signals:
            signal.signal(sig, signal.SIG_IGN)
    main(args)
    if spawned:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def hide_cuda_from_cpu_workers(args: argparse.Namespace) -> bool:
    """Hide CUDA from the processes of a multi-process run whose config runs on the CPU.

    detectron2's ``launch()`` gives its workers NCCL whenever CUDA is available, and NCCL
    rejects the CPU tensors of such a run (FCOS's loss normaliser, the bank's gather, DDP);
    workers that see no CUDA use gloo. Returns whether CUDA was hidden."""
    if args.num_gpus * args.num_machines <= 1 or not torch.cuda.is_available():
        return False
    # Only the device is read: the workers load and check the config (and its datasets).
    device = merge_config(args.config_file, args.opts).MODEL.DEVICE
    if torch.device(device).type != "cpu":
        return False
    logger.info("MODEL.DEVICE is cpu: the worker processes use gloo and see no CUDA device")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return True


def run(args: argparse.Namespace, ignored_signals: Sequence[signal.Signals] = ()):
    """Start ``args.num_gpus`` processes on this machine (gloo on CPU) and run :func:`main` in
    each; ``launch()`` runs a world of one in this process instead. Spawned processes ignore
    ``ignored_signals``; their collectives time out after :func:`dist_timeout`."""
    hide_cuda_from_cpu_workers(args)
    return launch(
        _main_in_worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, tuple(ignored_signals)),
        timeout=dist_timeout(args),
    )
