#!/usr/bin/env python
"""Which CPU code paths a training's numbers depend on: the same 20 iterations of CondInst on
cells (seed 1, one thread) under MKL, oneDNN and ATen pins, and once more unpinned to show that
a run repeats to the bit. Prints the total loss at iteration 19 of each and writes JSON.

    python benchmarks/numeric_paths.py --out benchmarks/results/numeric_paths_cpu.json

A pin that changes the loss names a library whose code path, chosen per CPU unless pinned, makes
the same code and seed train differently on another machine.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ablation import NUMERIC_ENV, numeric_environment, train_command  # noqa: E402

SETTINGS = {
    "unpinned": {},
    "unpinned, again": {},
    "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
}


def total_loss_at_last_log(output_dir: str) -> float:
    with open(os.path.join(output_dir, "metrics.json")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [line for line in lines if "total_loss" in line][-1]["total_loss"]


def train(env: dict, output_dir: str) -> float:
    opts = ["SOLVER.MAX_ITER", "20", "TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "100000"]
    cmd = train_command("CondInst", "cells", 1, [*opts, "OUTPUT_DIR", output_dir])
    # Pins of the caller's environment are dropped, so that "unpinned" is unpinned.
    inherited = {k: v for k, v in os.environ.items() if k not in NUMERIC_ENV}
    full_env = {**inherited, "OMP_NUM_THREADS": "1", **env}
    subprocess.run(
        cmd, env=full_env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    return total_loss_at_last_log(output_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    losses = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, env) in enumerate(SETTINGS.items()):
            losses[name] = train(env, os.path.join(tmp, str(i)))
            print(f"{name:<28} total loss at iteration 19: {losses[name]!r}")
    results = {"environment": numeric_environment(), "total_loss_iter19": losses}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
