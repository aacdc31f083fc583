#!/usr/bin/env python
"""Accuracy ablation of the IUQ terms on the embedded dataset: each variant of the demo config
trained with the same schedule and seeds, evaluated on shapes_val.

    python benchmarks/ablation.py --seeds 1 2 3 --jobs 2 --out benchmarks/results/ablation.json
    python benchmarks/ablation.py --dataset cells --variants CondInst +bank ... SOLVER.MAX_ITER 700

Runs are independent train_net.py processes (--jobs at a time; with 2 jobs on 2 cores each run
gets one core). A run whose OUTPUT_DIR already holds its final metrics is not repeated, so an
interrupted ablation continues where it stopped. With --eval-opts every final model is also
evaluated with those overrides (``train_net.py --eval-only``, beside its run, also kept), e.g.
``--eval-opts "INPUT.MIN_SIZE_TEST 192 INPUT.MAX_SIZE_TEST 288"``. Prints a markdown table of the
mean and sample standard deviation of segm and bbox AP per variant, and the AP of each seed, and
writes JSON.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "Demo", "shapes_CondInst.yaml")
# The bank's weight and query cap pinned to what the recorded runs used (weight 1, every query;
# the defaults are now 0.1 and 64), so that a variant keeps meaning what it was run with.
IUQ = [
    *("MODEL.META_ARCHITECTURE", "IUQCondInst"),
    *("MODEL.IUQ.INTER.LOSS_WEIGHT", "1.0", "MODEL.IUQ.INTER.MAX_QUERIES", "-1"),
]
# Equivariance (off by default since the measurements of docs/method.md) needs the mapper that
# makes the views.
IUQ_VIEWS = IUQ + ["MODEL.IUQ.EQUI.ENABLED", "True", "INPUT.DATASET_MAPPER_NAME", "iuq"]
NO_BANK = ["MODEL.IUQ.INTER.ENABLED", "False"]
NO_EQUI = ["MODEL.IUQ.EQUI.ENABLED", "False"]
# The bank with every MODEL.IUQ.INTER key at its current default, no equivariance views.
DEFAULT_BANK = ["MODEL.META_ARCHITECTURE", "IUQCondInst", *NO_EQUI]
EXTRA = ["MODEL.IUQ.EQUI.MODE", "extra"]
INSTANCE_CENTERED = ["MODEL.IUQ.INTER.COORDS", "instance_centered"]
PER_IMAGE = ["MODEL.IUQ.INTER.NORMALIZATION", "query_image"]
WIDE_FEATURES = ["MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS", "16"]
FOCAL_GAMMA_4 = ["MODEL.IUQ.INTER.FOCAL_GAMMA", "4.0"]
# GroupNorm instead of BatchNorm in the backbone and the mask branch (the FCOS towers already
# use it): "paired" views then no longer halve the images BatchNorm's statistics come from.
GROUP_NORM = ["MODEL.RESNETS.NORM", "GN", "MODEL.CONDINST.MASK_BRANCH.NORM", "GN"]
# Views that are never flipped: a trained CondInst is far from flip-equivariant with the
# identity map on F's channels, and close to crop and rescale equivariance (docs/method.md).
NO_VIEW_FLIP = ["MODEL.IUQ.EQUI.FLIP_PROB", "0.0"]
# BoxInst trained from the boxes alone (its mapper reads no masks), evaluated on the true masks:
# what configs/Demo/shapes_BoxInst.yaml changes in the demo config (64 proposals per image, a
# 16-channel mask branch, the pairwise warm-up at AdelaiDet's share of the schedule, no bottom
# rows removed). On the cells recipe (1400 iterations) pass MODEL.BOXINST.PAIRWISE.WARMUP_ITERS 150
# as configs/Demo/cells_BoxInst.yaml does.
BOXINST = [
    *("MODEL.META_ARCHITECTURE", "CondInst", "MODEL.BOXINST.ENABLED", "True"),
    *("MODEL.CONDINST.MAX_PROPOSALS", "-1", "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM", "64"),
    *("MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS", "16", "MODEL.BOXINST.BOTTOM_PIXELS_REMOVED", "0"),
    *("MODEL.BOXINST.PAIRWISE.WARMUP_ITERS", "300"),
]
# Embedded datasets: (train, val, number of classes).
DATASETS = {"shapes": ("shapes_train", "shapes_val", 4), "cells": ("cells_train", "cells_val", 2)}


def equi_weights(query: float, feat: float):
    """Equivariance loss weights, pinned so that a variant keeps meaning what it was run with
    when the defaults change (the recorded equivariance runs used query 3, feat 1)."""
    return [
        "MODEL.IUQ.EQUI.QUERY_LOSS_WEIGHT",
        str(query),
        "MODEL.IUQ.EQUI.FEAT_LOSS_WEIGHT",
        str(feat),
    ]


VARIANTS = {
    "CondInst": ["MODEL.META_ARCHITECTURE", "CondInst"],
    "BoxInst": BOXINST,
    # Pairs count down to a colour similarity of 0.05 (LAB distance 6) instead of 0.3 (2.4): on
    # the noisy cells images 0.3 leaves 6% of neighbours within an instance similar (shapes: 25%),
    # 0.05 gives 28%, with 1.3% of the pairs across an instance's boundary.
    "BoxInst (colour threshold 0.05)": BOXINST + ["MODEL.BOXINST.PAIRWISE.COLOR_THRESH", "0.05"],
    # What the demo's IUQ config trains: the bank with every MODEL.IUQ.INTER key at its current
    # default (this one follows the defaults, on purpose), no equivariance views.
    "IUQ (defaults)": DEFAULT_BANK,
    # The defaults at the earlier default weight and at a lower one.
    "IUQ (defaults, weight 0.25)": DEFAULT_BANK + ["MODEL.IUQ.INTER.LOSS_WEIGHT", "0.25"],
    "IUQ (defaults, weight 0.1)": DEFAULT_BANK + ["MODEL.IUQ.INTER.LOSS_WEIGHT", "0.1"],
    "CondInst (GN)": ["MODEL.META_ARCHITECTURE", "CondInst", *GROUP_NORM],
    "+equivariance (GN, paired, query 3, feat 0)": IUQ_VIEWS
    + NO_BANK
    + GROUP_NORM
    + equi_weights(3.0, 0.0),
    "+equivariance (GN, paired, query 3, no flip)": IUQ_VIEWS
    + NO_BANK
    + GROUP_NORM
    + NO_VIEW_FLIP
    + equi_weights(3.0, 0.0),
    "+equivariance (extra, query 3, feat 0)": IUQ_VIEWS + NO_BANK + EXTRA + equi_weights(3.0, 0.0),
    # Mask features twice as wide as AdelaiDet's 8 channels: room in F for what tells one
    # image's instance from another's look-alike, with and without the bank.
    "CondInst (16-d mask features)": ["MODEL.META_ARCHITECTURE", "CondInst", *WIDE_FEATURES],
    "IUQ (defaults, 16-d mask features)": DEFAULT_BANK + WIDE_FEATURES,
    # A focal exponent of 4 instead of 2: the pairs on which a query already stays silent
    # (p ~ 0.1) then send ~60x less gradient, those on which it fires (p > 0.5) about half as
    # much, so that the loss presses where the query fires, not on every logit.
    "IUQ (defaults, focal gamma 4)": DEFAULT_BANK + FOCAL_GAMMA_4,
    "IUQ (defaults, focal gamma 4, weight 0.25)": DEFAULT_BANK
    + FOCAL_GAMMA_4
    + ["MODEL.IUQ.INTER.LOSS_WEIGHT", "0.25"],
    "views only (GN, paired)": IUQ_VIEWS + NO_BANK + GROUP_NORM + equi_weights(0.0, 0.0),
    "IUQ (defaults, weight 0.05)": DEFAULT_BANK + ["MODEL.IUQ.INTER.LOSS_WEIGHT", "0.05"],
    "+bank": IUQ + NO_EQUI,
    "+equivariance": IUQ_VIEWS + NO_BANK + equi_weights(3.0, 1.0),
    "+bank +equivariance": IUQ_VIEWS + equi_weights(3.0, 1.0),
    # Diagnostics: the other placement of bank pixels (alone, at a lower weight, with
    # equivariance); the paired views without their losses (what halving the distinct images per
    # step costs) and with a lighter query term only.
    "+bank (instance_centered)": IUQ + NO_EQUI + INSTANCE_CENTERED,
    "+bank (instance_centered, weight 0.25)": IUQ
    + NO_EQUI
    + INSTANCE_CENTERED
    + ["MODEL.IUQ.INTER.LOSS_WEIGHT", "0.25"],
    "+bank +equivariance (instance_centered)": IUQ_VIEWS
    + INSTANCE_CENTERED
    + equi_weights(3.0, 1.0),
    "views only": IUQ_VIEWS + NO_BANK + equi_weights(0.0, 0.0),
    "+equivariance (query 1, feat 0)": IUQ_VIEWS + NO_BANK + equi_weights(1.0, 0.0),
    # The views on top of IMS_PER_BATCH originals: as many distinct images as CondInst sees,
    # at twice the cost per step; each loss term alone.
    "+equivariance (extra)": IUQ_VIEWS + NO_BANK + EXTRA + equi_weights(3.0, 1.0),
    "views only (extra)": IUQ_VIEWS + NO_BANK + EXTRA + equi_weights(0.0, 0.0),
    "+equivariance (extra, query 1, feat 0)": IUQ_VIEWS + NO_BANK + EXTRA + equi_weights(1.0, 0.0),
    "+equivariance (extra, query 0, feat 1)": IUQ_VIEWS + NO_BANK + EXTRA + equi_weights(0.0, 1.0),
    # The query term at a tenth of the paper's weight: at 3 its gradient into the controller is
    # 5x the mask loss's (docs/method.md).
    "+equivariance (extra, query 0.3, feat 0)": IUQ_VIEWS
    + NO_BANK
    + EXTRA
    + equi_weights(0.3, 0.0),
    # What "extra" adds besides the views: CondInst with as many images per step, all distinct.
    "CondInst (IMS_PER_BATCH 8)": [
        "MODEL.META_ARCHITECTURE",
        "CondInst",
        "SOLVER.IMS_PER_BATCH",
        "8",
    ],
    # The default bank where the demo recipe is not batch-limited: beside the CondInst above.
    "IUQ (defaults, IMS_PER_BATCH 8)": DEFAULT_BANK + ["SOLVER.IMS_PER_BATCH", "8"],
    "IUQ (defaults, IMS_PER_BATCH 8, weight 0.25)": DEFAULT_BANK
    + ["SOLVER.IMS_PER_BATCH", "8", "MODEL.IUQ.INTER.LOSS_WEIGHT", "0.25"],
    # What "paired" does to the originals: CondInst with as many dataset images per step.
    "CondInst (IMS_PER_BATCH 2)": [
        "MODEL.META_ARCHITECTURE",
        "CondInst",
        "SOLVER.IMS_PER_BATCH",
        "2",
    ],
    "+bank (per-image norm)": IUQ + NO_EQUI + PER_IMAGE,
    # Weight and warm-up, and whether the loss works by lowering the query's output bias.
    "+bank (weight 0.25)": IUQ + NO_EQUI + ["MODEL.IUQ.INTER.LOSS_WEIGHT", "0.25"],
    "+bank (warm-up 350)": IUQ + NO_EQUI + ["MODEL.IUQ.INTER.WARMUP_ITERS", "350"],
}
CORE = ["CondInst", "+bank", "+equivariance", "+bank +equivariance"]


def final_metrics(output_dir: str):
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    # A run stopped before its first log period leaves the file empty.
    return lines[-1] if lines and "segm/AP" in lines[-1] else None


# Environment variables that pick the CPU code paths of MKL, oneDNN and ATen.
NUMERIC_ENV = ("OMP_NUM_THREADS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def numeric_environment() -> dict:
    """What a CPU run's numbers may depend on besides the code, the config and the seed: the
    CPU and its vector extensions, the library versions, and the pins of MKL's, oneDNN's and
    ATen's code paths. The same code and seed with MKL's path pinned differently diverge
    within 20 iterations, and CondInst's seeds 1-3 trained on two machines ended up to 0.6 mask
    AP apart (README, "Reproducibility"); the data does not change with these library
    versions."""
    import cv2
    import numpy
    import PIL
    import torch

    cpu, extensions = "", []
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            info = [line.split(":", 1) for line in f if ":" in line]
        cpu = next((v.strip() for k, v in info if k.strip() == "model name"), "")
        flags = next((v.split() for k, v in info if k.strip() == "flags"), [])
        extensions = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    return {
        "cpu": cpu,
        "cpu_extensions": extensions,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "env": {k: os.environ[k] for k in NUMERIC_ENV if k in os.environ},
    }


def dataset_opts(dataset: str):
    train, val, num_classes = DATASETS[dataset]
    return [
        "DATASETS.TRAIN",
        f"('{train}',)",
        "DATASETS.TEST",
        f"('{val}',)",
        "MODEL.FCOS.NUM_CLASSES",
        str(num_classes),
    ]


def slugify(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def reevaluated_metrics(output_dir: str):
    path = os.path.join(output_dir, "eval_results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    return {f"{task}/{k}": v for task, metrics in results.items() for k, v in metrics.items()}


def train_command(variant: str, dataset: str, seed: int, opts) -> list:
    """The train_net.py command line of ``variant`` on ``dataset`` with ``seed``, in-process
    data loading, and the config overrides ``opts`` last."""
    return [
        sys.executable,
        os.path.join(REPO, "train_net.py"),
        "--config-file",
        CONFIG,
        *VARIANTS[variant],
        *dataset_opts(dataset),
        "SEED",
        str(seed),
        "DATALOADER.NUM_WORKERS",
        "0",
        *opts,
    ]


def run(variant: str, seed: int, root: str, dataset: str, opts, eval_opts) -> dict:
    output_dir = os.path.join(root, dataset, f"{slugify(variant)}_seed{seed}")
    cmd = train_command(variant, dataset, seed, opts)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if final_metrics(output_dir) is None:
        os.makedirs(os.path.dirname(output_dir), exist_ok=True)
        with open(output_dir + ".log", "w") as log:
            cmd_train = cmd + ["OUTPUT_DIR", output_dir]
            subprocess.run(cmd_train, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    m = final_metrics(output_dir)
    if eval_opts:
        eval_dir = f"{output_dir}_eval_{slugify(' '.join(eval_opts))}"
        if reevaluated_metrics(eval_dir) is None:
            weights = os.path.join(output_dir, "model_final.pth")
            cmd_eval = [*cmd[:2], "--eval-only", *cmd[2:], "MODEL.WEIGHTS", weights]
            with open(eval_dir + ".log", "w") as log:
                subprocess.run(
                    cmd_eval + ["OUTPUT_DIR", eval_dir, *eval_opts],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    check=True,
                )
        m = reevaluated_metrics(eval_dir)
    return {
        "variant": variant,
        "seed": seed,
        "segm_AP": m["segm/AP"],
        "bbox_AP": m["bbox/AP"],
        "segm_AP50": m["segm/AP50"],
        "segm_AP75": m["segm/AP75"],
        "segm_APs": m["segm/APs"],
        "output_dir": os.path.relpath(output_dir, REPO),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=CORE, choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--dataset", default="shapes", choices=list(DATASETS))
    parser.add_argument("--root", default=os.path.join(REPO, "output", "ablation"))
    parser.add_argument("--out", default="")
    parser.add_argument(
        "--eval-opts",
        default="",
        help="config overrides, one quoted string, with which every run's final model is also "
        "evaluated (e.g. another test size); the table then reports that evaluation",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = parser.parse_args()
    os.makedirs(args.root, exist_ok=True)

    tasks = [(v, s) for s in args.seeds for v in args.variants]
    eval_opts = shlex.split(args.eval_opts)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(
            pool.map(
                lambda t: run(t[0], t[1], args.root, args.dataset, args.opts, eval_opts), tasks
            )
        )

    summary = {}
    print("| variant | segm AP | segm AP75 | bbox AP | segm AP per seed | bbox AP per seed |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        stats = {}
        for key in ("segm_AP", "bbox_AP", "segm_AP50", "segm_AP75", "segm_APs"):
            values = [r[key] for r in mine]
            stats[key] = {
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
        summary[variant] = stats
        cells = [
            f"{stats[k]['mean']:.1f} ± {stats[k]['std']:.1f}"
            for k in ("segm_AP", "segm_AP75", "bbox_AP")
        ]
        cells += [" / ".join(f"{r[k]:.1f}" for r in mine) for k in ("segm_AP", "bbox_AP")]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(
                {
                    "config": os.path.relpath(CONFIG, REPO),
                    "dataset": args.dataset,
                    "opts": args.opts,
                    "eval_opts": eval_opts,
                    "seeds": args.seeds,
                    # Of this process; runs read from disk may have been trained elsewhere,
                    # and run() gives each training OMP_NUM_THREADS=1 unless it is set.
                    "environment": numeric_environment(),
                    "summary": summary,
                    "runs": rows,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
