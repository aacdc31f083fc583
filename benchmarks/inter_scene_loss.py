#!/usr/bin/env python
"""Cost of the inter-scene focal loss (forward + backward) against queries x sampled entries.

    python benchmarks/inter_scene_loss.py --queries 100 500 --entries 1024 4096 8192 \
        --out benchmarks/results/inter_scene_cpu.json
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from iuq_d2.layers import dynamic_layer_shapes
from iuq_d2.layers.inter_scene import inter_scene_focal_loss


def time_once(q: int, n: int, device: torch.device, repeats: int) -> dict:
    shapes = dynamic_layer_shapes(10, 8, 3)
    params = torch.randn(q, sum(o * i + o for o, i in shapes), device=device, requires_grad=True)
    args = (
        torch.randn(q, 2, device=device) * 100,
        torch.full((q,), 128.0, device=device),
        torch.randint(0, 4, (q,), device=device),
        torch.randn(n, 8, device=device),
        torch.randn(n, 2, device=device) * 100,
        torch.randint(0, 64, (n,), device=device),
    )
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss, _ = inter_scene_focal_loss(
            params, args[0], args[1], args[2], args[3], args[4], args[5], shapes
        )
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first call pays one-off allocation costs
            times.append(time.perf_counter() - start)
    result = {"queries": q, "entries": n, "median_ms": 1000 * statistics.median(times)}
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--entries", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    rows = [time_once(q, n, device, args.repeats) for q in args.queries for n in args.entries]
    print(f"inter_scene_focal_loss forward+backward on {name} (torch {torch.__version__})")
    print(
        f"{'queries':>8} {'entries':>8} {'ms':>9}"
        + (f" {'peak MB':>8}" if device.type == "cuda" else "")
    )
    for r in rows:
        extra = f" {r['peak_mem_mb']:>8.0f}" if "peak_mem_mb" in r else ""
        print(f"{r['queries']:>8} {r['entries']:>8} {r['median_ms']:>9.1f}{extra}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
