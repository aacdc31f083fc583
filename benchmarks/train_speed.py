#!/usr/bin/env python
"""Seconds per training iteration and peak memory of CondInst and its IUQ variants.

Each (variant, repeat) runs in a fresh subprocess, round-robin, so that variants see the same
machine conditions and their peak memory is their own. A step is forward + backward +
optimizer step on batches prefetched from the config's training loader (data loading is not
timed). Every batch is run once untimed before the timed pass over the same batches: the first
step on a new input shape pays one-off costs (oneDNN / cuDNN kernel selection) that a long
training run amortises over its few distinct padded shapes. Prints a table with ratios to the
first variant and writes JSON.

    python benchmarks/train_speed.py --config-file configs/Demo/shapes_CondInst.yaml \
        --variants condinst bank equi_paired equi_extra full --out benchmarks/results/cpu.json
    python benchmarks/train_speed.py --interleaved --iters 10 --repeats 3 \
        --variants condinst boxinst condinst_boxinst_model boxinst_recipe \
        --out benchmarks/results/train_speed_boxinst_cpu.json   # BoxInst against CondInst

With ``--interleaved`` all variants live in one process and take turns on every batch, and the
ratio is the median of per-batch ratios: the measurement for overheads smaller than the VM's
drift between processes (peak memory is then not per variant, and not reported).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# IUQCondInst with the mapper that makes the equivariance views.
IUQ_VIEWS = [
    *("MODEL.META_ARCHITECTURE", "IUQCondInst", "INPUT.DATASET_MAPPER_NAME", "iuq"),
    *("MODEL.IUQ.EQUI.ENABLED", "True"),
]
CONDINST = ["MODEL.META_ARCHITECTURE", "CondInst"]
BANK = ["MODEL.META_ARCHITECTURE", "IUQCondInst", "MODEL.IUQ.EQUI.ENABLED", "False"]
# BoxInst's losses (and its mapper, which reads no masks) on the same model as "condinst"; and
# what configs/BoxInst and the demo's BoxInst config change besides: 64 proposals per image for
# the mask losses and a 16-channel mask branch, with BoxInst's losses or CondInst's.
BOXINST = [*CONDINST, "MODEL.BOXINST.ENABLED", "True"]
BOXINST_MODEL = [
    *("MODEL.CONDINST.MAX_PROPOSALS", "-1", "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM", "64"),
    *("MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS", "16"),
]
# Config overrides of each variant, applied after the config file and --opts.
VARIANTS = {
    "condinst": CONDINST,
    "boxinst": BOXINST,
    "boxinst_recipe": [*BOXINST, *BOXINST_MODEL, "MODEL.BOXINST.BOTTOM_PIXELS_REMOVED", "0"],
    "condinst_boxinst_model": [*CONDINST, *BOXINST_MODEL],
    "bank": BANK,
    # The bank with every query evaluated and with at most 32 / 64 of them per step.
    **{
        f"bank_q{'all' if q < 0 else q}": [
            *BANK,
            *("MODEL.IUQ.INTER.MAX_QUERIES", str(q)),
        ]
        for q in (-1, 32, 64)
    },
    # The convolutions' memory layout, whatever the config says (MODEL.CONDINST.CHANNELS_LAST).
    **{
        f"{name}_{layout}": [*base, "MODEL.CONDINST.CHANNELS_LAST", str(last)]
        for name, base in (("condinst", CONDINST), ("bank", BANK))
        for layout, last in (("nchw", False), ("nhwc", True))
    },
    "equi_paired": [
        *IUQ_VIEWS,
        "MODEL.IUQ.INTER.ENABLED",
        "False",
        "MODEL.IUQ.EQUI.MODE",
        "paired",
    ],
    "equi_extra": [*IUQ_VIEWS, "MODEL.IUQ.INTER.ENABLED", "False", "MODEL.IUQ.EQUI.MODE", "extra"],
    "full": [*IUQ_VIEWS, "MODEL.IUQ.EQUI.MODE", "paired"],
}


def build_stepper(args, variant: str, seed: int):
    """The variant's model, optimizer and ``args.iters`` prefetched batches; returns the
    training step (forward, backward, optimizer step), the batches and the model."""
    import torch
    from detectron2.utils.env import seed_all_rng

    from iuq_d2.engine import Trainer
    from iuq_d2.engine.config_loader import load_config

    cfg = load_config(args.config_file, args.opts + VARIANTS[variant], freeze=False)
    cfg.DATALOADER.NUM_WORKERS = 0
    if args.device:
        cfg.MODEL.DEVICE = args.device
    seed_all_rng(seed)  # the same weights and images for every variant
    model = Trainer.build_model(cfg)
    model.train()
    optimizer = Trainer.build_optimizer(cfg, model)
    loader = iter(Trainer.build_train_loader(cfg))
    batches = [next(loader) for _ in range(args.iters)]
    scaler = torch.amp.GradScaler("cuda") if args.amp else None
    on_cuda = model.device.type == "cuda"

    def step(batch) -> float:
        """Seconds of one training step."""
        if on_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(model.device.type, enabled=args.amp):
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if on_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step, batches, model


def _device_name(model) -> str:
    import torch

    if model.device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"


def measure(args) -> dict:
    """Run in the subprocess: one untimed pass over ``args.iters`` batches, then a timed one."""
    import torch
    from detectron2.utils.events import EventStorage

    step, batches, model = build_stepper(args, args.variant, args.seed)
    on_cuda = model.device.type == "cuda"
    times = []
    with EventStorage() as storage:
        for batch in batches:
            step(batch)
            storage.iter += 1  # as the trainer does: periodic logging keeps its period
        for batch in batches:
            storage.iter += 1
            times.append(step(batch))
    return {
        "variant": args.variant,
        "images_per_step": sum(1 + ("view" in x) for x in batches[0]),
        "step_s": times,
        "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20
        if on_cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "memory_kind": "cuda max_memory_allocated" if on_cuda else "process peak RSS",
        "device": _device_name(model),
    }


def write_json(path: str, header: str, summary: dict, **raw) -> None:
    """The table's header and summary and the raw timings, when ``--out`` asks for them."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"header": header, "argv": sys.argv[1:], "summary": summary, **raw}, f, indent=1)


def interleaved(args) -> None:
    """All variants in this process, stepping in turn on each batch (the order rotating from
    batch to batch), so that every ratio compares steps taken a fraction of a second apart:
    on a shared VM the speed drifts by more than the bank's cost between processes."""
    from detectron2.utils.events import EventStorage

    steppers = {v: build_stepper(args, v, args.seed) for v in args.variants}
    times = {v: [] for v in args.variants}
    with EventStorage() as storage:
        for timed in [False] + [True] * args.repeats:
            for i in range(args.iters):
                storage.iter += 1
                order = (
                    args.variants[i % len(args.variants) :]
                    + args.variants[: i % len(args.variants)]
                )
                for variant in order:
                    step, batches, _ = steppers[variant]
                    seconds = step(batches[i])
                    if timed:
                        times[variant].append(seconds)
    base = args.variants[0]
    summary = {}
    print(f"{'variant':<16} {'s/step':>8} {'ratio':>6} {'per-step ratio q25-q75':>24}")
    for variant in args.variants:
        ratios = sorted(t / b for t, b in zip(times[variant], times[base]))
        q25, q50, q75 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        summary[variant] = {
            "median_step_s": statistics.median(times[variant]),
            "median_of_step_ratios": q50,
            "step_ratio_q25": q25,
            "step_ratio_q75": q75,
            "steps_timed": len(times[variant]),
        }
        print(
            f"{variant:<16} {summary[variant]['median_step_s']:>8.3f} {q50:>6.3f} "
            f"{q25:>11.3f} - {q75:.3f}"
        )
    device = _device_name(next(iter(steppers.values()))[2])
    header = (
        f"config {args.config_file} {' '.join(args.opts)} | device {device} | interleaved in "
        f"one process, {args.repeats}x{args.iters} steps per variant"
    )
    print(header)
    write_json(args.out, header, summary, step_s=times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/Demo/shapes_CondInst.yaml")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["condinst", "bank", "equi_paired", "full"],
        choices=sorted(VARIANTS),
    )
    parser.add_argument(
        "--iters", type=int, default=10, help="batches, each run untimed then timed"
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="subprocesses per variant, round-robin"
    )
    parser.add_argument("--device", default="", help="override MODEL.DEVICE")
    parser.add_argument("--amp", action="store_true", help="autocast (CUDA float16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="JSON output path")
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="all variants in one process, in turn on every batch; --repeats timed passes",
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set in the worker subprocess
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()

    if args.variant:
        print("RESULT " + json.dumps(measure(args)))
        return
    if args.interleaved:
        interleaved(args)
        return

    runs = {v: [] for v in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--variant",
                variant,
                "--config-file",
                args.config_file,
                "--iters",
                str(args.iters),
                "--seed",
                str(args.seed + repeat),
            ]
            cmd += ["--device", args.device] if args.device else []
            cmd += ["--amp"] if args.amp else []
            cmd += args.opts
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                sys.exit(f"variant {variant} failed:\n{out.stderr[-3000:]}")
            runs[variant].append(json.loads(lines[0][len("RESULT ") :]))

    base = args.variants[0]
    summary = {}
    for variant, results in runs.items():
        times = [t for r in results for t in r["step_s"]]
        summary[variant] = {
            "median_step_s": statistics.median(times),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in results),
            "images_per_step": results[0]["images_per_step"],
            "steps_timed": len(times),
        }
    for variant, s in summary.items():
        s["step_ratio"] = s["median_step_s"] / summary[base]["median_step_s"]
        s["mem_ratio"] = s["peak_mem_mb"] / summary[base]["peak_mem_mb"]

    first = next(iter(runs.values()))[0]
    header = (
        f"config {args.config_file} {' '.join(args.opts)} | device {first['device']} | "
        f"memory: {first['memory_kind']} | {args.repeats}x{args.iters} steps per variant"
    )
    print(header)
    print(
        f"{'variant':<16} {'images/step':>11} {'s/step':>8} {'ratio':>6} "
        f"{'peak MB':>9} {'ratio':>6}"
    )
    for variant, s in summary.items():
        print(
            f"{variant:<16} {s['images_per_step']:>11} {s['median_step_s']:>8.3f} "
            f"{s['step_ratio']:>6.2f} "
            f"{s['peak_mem_mb']:>9.0f} {s['mem_ratio']:>6.2f}"
        )
    write_json(args.out, header, summary, runs=runs)


if __name__ == "__main__":
    main()
