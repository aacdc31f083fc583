#!/usr/bin/env python
"""Where a training step's time goes: torch.profiler over a few steps of a config.

    python benchmarks/profile_step.py --config-file configs/Demo/shapes_IUQ.yaml \
        --out benchmarks/results/profile_demo_iuq_cpu.json

Step ratios between two models measured in separate processes move by +-0.15 on this 2-core
VM from run to run; the profile of one model's steps says directly what share of them an op
takes (e.g. the inter-scene loss, ``TiledInterSceneLoss``). Batches come from the config's
training loader and are run once untimed (one-off kernel selection), then profiled. Prints the
ops with the most self time and writes JSON.
"""

import argparse
import json
import os
import platform

import torch
from detectron2.utils.events import EventStorage
from torch.profiler import ProfilerActivity, profile

from iuq_d2.engine import Trainer
from iuq_d2.engine.config_loader import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/Demo/shapes_IUQ.yaml")
    parser.add_argument("--iters", type=int, default=5, help="batches, run untimed, then profiled")
    parser.add_argument("--top", type=int, default=15, help="ops listed")
    parser.add_argument(
        "--focus",
        nargs="*",
        default=["TiledInterSceneLoss", "TiledDenseMaskHead"],
        help="ops whose inclusive time is reported whatever their rank",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="JSON output path")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    cfg = load_config(args.config_file, args.opts, freeze=False)
    cfg.DATALOADER.NUM_WORKERS = 0
    torch.manual_seed(args.seed)
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(args.iters)]

    def step(batch) -> None:
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with EventStorage() as storage:
        for batch in batches:
            storage.iter += 1  # as the trainer does: periodic logging keeps its period
            step(batch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                storage.iter += 1
                step(batch)
    events = prof.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in events) / 1000 / args.iters
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1000 / args.iters,
            "total_ms_per_step": e.cpu_time_total / 1000 / args.iters,
            "calls_per_step": e.count / args.iters,
        }
        for e in ops
    ]
    header = (
        f"config {args.config_file} {' '.join(args.opts)} | {platform.processor() or 'cpu'}, "
        f"{torch.get_num_threads()} threads | {args.iters} steps profiled | "
        f"{total_ms:.1f} ms of op self time per step"
    )
    print(header)
    print(f"{'op':<40} {'self ms':>8} {'share':>6} {'incl. ms':>9} {'calls':>6}")
    for row in rows[: args.top]:
        print(
            f"{row['op'][:40]:<40} {row['self_ms_per_step']:>8.1f} "
            f"{row['self_ms_per_step'] / total_ms:>6.1%} {row['total_ms_per_step']:>9.1f} "
            f"{row['calls_per_step']:>6.0f}"
        )
    for row in rows:
        if row["op"] in args.focus:
            print(
                f"{row['op']}: {row['total_ms_per_step']:.1f} ms per step including the ops it "
                f"calls, {row['total_ms_per_step'] / total_ms:.1%} of the step"
            )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"header": header, "argv": [args.config_file, *args.opts], "ops": rows}, f)


if __name__ == "__main__":
    main()
