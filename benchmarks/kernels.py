#!/usr/bin/env python
"""Inter-scene focal loss / dense mask head implementations: fwd+bwd time and peak memory.

    python benchmarks/kernels.py                       # Q in {200, 500}, N in {1k..16k}
    python benchmarks/kernels.py --queries 200 --entries 1024 8192 --repeats 3
    python benchmarks/kernels.py --op dense_mask_head  # Q in {100, 500}, F 100x136, 200x272
    python benchmarks/kernels.py --op dense_mask_head --queries 500 --maps 100x136
    python benchmarks/kernels.py --flatness --repeats 9  # ns/pair over N, sizes interleaved

Each (impl, Q, N) runs in its own subprocess, with ``torch.set_num_threads(1)`` on CPU, so
that timings do not depend on the machine's free cores and peaks do not leak between configs.
Peak memory: on CPU the rise of the process's peak resident set size (``ru_maxrss``) over its
value just before the first call (inputs already built), i.e. everything the call allocates,
transient chunks included; on CUDA ``torch.cuda.max_memory_allocated`` over the same baseline.
Writes a markdown table to stdout and JSON to benchmarks/results/kernels_<device>.json
(inter-scene) or benchmarks/results/dense_mask_head_<device>.json (dense mask head: Q queries
over 2 images, mask features [2, 8, H, W] at stride 8, the logits back-propagated with a fixed
random gradient; R-50 at 800 px gives a 100x136 map).
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

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inter_scene_step(impl: str, num_q: int, num_n: int, device: str):
    """Forward + backward of the inter-scene loss on random inputs of that size."""
    from iuq_d2.layers import dynamic_layer_shapes
    from iuq_d2.layers.inter_scene_loss import inter_scene_focal_loss

    torch.manual_seed(0)
    dev = torch.device(device)
    shapes = dynamic_layer_shapes(10, 8, 3)
    params = torch.randn(num_q, sum(o * i + o for o, i in shapes), device=dev) * 0.3
    params.requires_grad_(True)
    feats = torch.randn(num_n, 8, device=dev)  # bank entries: constants
    args = (
        torch.randn(num_q, 2, device=dev) * 100,
        torch.full((num_q,), 128.0, device=dev),
        torch.randint(0, 8, (num_q,), device=dev),
        feats,
        torch.randn(num_n, 2, device=dev) * 100,
        torch.randint(0, 64, (num_n,), device=dev),
    )

    def step() -> None:
        loss, _ = inter_scene_focal_loss(params, *args, shapes, impl=impl)
        loss.backward()
        params.grad = None

    return step


def worker(impl: str, num_q: int, num_n: int, repeats: int, device: str) -> dict:
    step = inter_scene_step(impl, num_q, num_n, device)
    ms, peak = _measure(step, torch.device(device), repeats)
    return {
        "impl": impl,
        "queries": num_q,
        "entries": num_n,
        "median_ms": ms,
        "ns_per_pair": 1e6 * ms / (num_q * num_n),
        "peak_mem_mb": peak / 2**20,
    }


def flatness(impl: str, num_q: int, sizes: list, rounds: int, device: str) -> dict:
    """ns per pair of every size in one process, the sizes taking turns (ascending, then
    descending, ...): separate processes, run one size after the other, drift on a shared VM
    by more than the 20% the target allows, and the drift then looks like a trend in N."""
    dev = torch.device(device)
    steps = {n: inter_scene_step(impl, num_q, n, device) for n in sizes}
    for step in steps.values():
        step()  # warm-up
    times = {n: [] for n in sizes}
    for r in range(rounds):
        for n in sorted(sizes, reverse=r % 2 == 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps[n]()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[n].append(time.perf_counter() - start)
    ns = {n: 1e9 * statistics.median(t) / (num_q * n) for n, t in times.items()}
    return {
        "impl": impl,
        "queries": num_q,
        "rounds": rounds,
        "ns_per_pair": ns,
        "spread": max(ns.values()) / min(ns.values()) - 1,
    }


def _measure(step, dev: torch.device, repeats: int):
    """Median wall time (ms) of ``step`` and the peak memory rise of its first call (bytes)."""

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # warm-up (allocator, triton compile); also the memory measurement
    sync()
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    return ms, peak


def dense_worker(impl: str, num_q: int, size: str, repeats: int, device: str) -> dict:
    from iuq_d2.layers import dynamic_layer_shapes
    from iuq_d2.layers.dense_mask_head import dense_mask_logits

    torch.manual_seed(0)
    dev = torch.device(device)
    height, width = (int(x) for x in size.split("x"))
    num_images, stride = 2, 8
    shapes = dynamic_layer_shapes(10, 8, 3)
    params = torch.randn(num_q, sum(o * i + o for o, i in shapes), device=dev) * 0.3
    params.requires_grad_(True)
    feats = torch.randn(num_images, 8, height, width, device=dev, requires_grad=True)
    cells = torch.randint(0, height * width, (num_q,), device=dev)
    locations = torch.stack([cells % width, cells // width], 1).float() * stride + stride // 2
    soi = torch.tensor([64.0, 128.0, 256.0, 512.0, 1024.0], device=dev)
    args = (
        torch.randint(0, num_images, (num_q,), device=dev),
        locations,
        soi[torch.randint(0, 5, (num_q,), device=dev)],
        stride,
        shapes,
    )
    grad_out = torch.randn(num_q, 1, height, width, device=dev)

    def step() -> None:
        dense_mask_logits(feats, params, *args, impl=impl).backward(grad_out)
        params.grad = feats.grad = None

    ms, peak = _measure(step, dev, repeats)
    return {
        "impl": impl,
        "queries": num_q,
        "height": height,
        "width": width,
        "median_ms": ms,
        "ns_per_query_pixel": 1e6 * ms / (num_q * height * width),
        "peak_mem_mb": peak / 2**20,
    }


def dense_summarize(rows: list) -> dict:
    """The target: peak memory at Q=500 on 100x136 at least 30% below the reference's."""
    out = {}
    for r in rows:
        if r["impl"] == "reference":
            continue
        ref = next(
            (
                x
                for x in rows
                if x["impl"] == "reference"
                and (x["queries"], x["height"], x["width"])
                == (r["queries"], r["height"], r["width"])
            ),
            None,
        )
        if ref:
            key = f"{r['impl']}_q{r['queries']}_{r['height']}x{r['width']}"
            out[f"memory_saving_{key}"] = 1 - r["peak_mem_mb"] / max(ref["peak_mem_mb"], 1e-3)
            out[f"speedup_{key}"] = ref["median_ms"] / r["median_ms"]
    saving = out.get("memory_saving_tiled_q500_100x136")
    if saving is not None:
        out["target_memory_saving_q500_100x136_met"] = saving >= 0.3
    return out


def run_config(
    impl: str, num_q: int, num_n, repeats: int, device: str, op: str = "inter_scene"
) -> dict:
    """One worker subprocess; ``num_n`` is the entry count, or "HxW" for the dense head."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        impl,
        str(num_q),
        str(num_n),
        "--repeats",
        str(repeats),
        "--device",
        device,
        "--op",
        op,
    ]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarize(rows: list) -> dict:
    """The targets: speed-up and flatness at Q=200, memory ratio at Q=500 N=16384."""

    def get(impl, q, n):
        return next(
            (r for r in rows if (r["impl"], r["queries"], r["entries"]) == (impl, q, n)), None
        )

    out = {}
    fast = "triton" if any(r["impl"] == "triton" for r in rows) else "tiled"
    ref, new = get("reference", 200, 8192), get(fast, 200, 8192)
    if ref and new:
        out["speedup_q200_n8192"] = ref["median_ms"] / new["median_ms"]
    flat = [r["ns_per_pair"] for r in rows if r["impl"] == fast and r["queries"] == 200]
    if len(flat) > 1:
        out["ns_per_pair_spread_q200"] = max(flat) / min(flat) - 1
    ref, new = get("reference", 500, 16384), get(fast, 500, 16384)
    if ref and new:
        out["memory_ratio_q500_n16384"] = ref["peak_mem_mb"] / max(new["peak_mem_mb"], 1e-3)
    return {"fast_impl": fast, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=("inter_scene", "dense_mask_head"), default="inter_scene")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "Q", "N"))
    parser.add_argument("--queries", type=int, nargs="+", default=None)
    parser.add_argument("--entries", type=int, nargs="+", default=[1024, 4096, 8192, 16384])
    parser.add_argument("--maps", nargs="+", default=["100x136", "200x272"], help="dense: HxW")
    parser.add_argument("--impls", nargs="+", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--flatness",
        action="store_true",
        help="inter-scene ns/pair over --entries at each of --queries, all in this process, "
        "--repeats rounds of interleaved sizes (the flatness target)",
    )
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    dense = args.op == "dense_mask_head"
    if args.device == "cpu":
        torch.set_num_threads(1)
    if args.worker:
        impl, q, n = args.worker
        if dense:
            print(json.dumps(dense_worker(impl, int(q), n, args.repeats, args.device)))
        else:
            print(json.dumps(worker(impl, int(q), int(n), args.repeats, args.device)))
        return

    if args.flatness:
        fast = args.impls[0] if args.impls else ("triton" if args.device == "cuda" else "tiled")
        rows = [
            flatness(fast, q, args.entries, args.repeats, args.device)
            for q in args.queries or [200]
        ]
        print("| impl | Q | " + " | ".join(f"N={n}" for n in args.entries) + " | spread |")
        print("|---|---:|" + "---:|" * (len(args.entries) + 1))
        for r in rows:
            cells = " | ".join(f"{r['ns_per_pair'][n]:.1f}" for n in args.entries)
            print(f"| {r['impl']} | {r['queries']} | {cells} | {100 * r['spread']:.0f}% |")
        out = args.out or os.path.join(
            REPO, "benchmarks", "results", f"kernels_flatness_{args.device}.json"
        )
        with open(out, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)
        return

    queries = args.queries or ([100, 500] if dense else [200, 500])
    impls = args.impls or (["reference", "tiled"] + (["triton"] if args.device == "cuda" else []))
    sizes = args.maps if dense else args.entries
    rows = [
        run_config(impl, q, n, args.repeats, args.device, args.op)
        for q in queries
        for n in sizes
        for impl in impls
    ]
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()} (1 thread)"
    if dense:
        print(f"dense_mask_logits forward+backward on {name}, torch {torch.__version__}\n")
        print("| impl | Q | H x W | ms | ns/(query*px) | peak MB |\n|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['impl']} | {r['queries']} | {r['height']}x{r['width']} | "
                f"{r['median_ms']:.1f} | {r['ns_per_query_pixel']:.1f} | {r['peak_mem_mb']:.1f} |"
            )
        summary = dense_summarize(rows)
    else:
        print(f"inter_scene_focal_loss forward+backward on {name}, torch {torch.__version__}\n")
        print("| impl | Q | N | ms | ns/pair | peak MB |\n|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r['impl']} | {r['queries']} | {r['entries']} | {r['median_ms']:.1f} | "
                f"{r['ns_per_pair']:.1f} | {r['peak_mem_mb']:.1f} |"
            )
        summary = summarize(rows)
    print(
        "\n"
        + "\n".join(
            f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}" for k, v in summary.items()
        )
    )
    stem = "dense_mask_head" if dense else "kernels"
    out = args.out or os.path.join(REPO, "benchmarks", "results", f"{stem}_{args.device}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            {
                "device": name,
                "torch": torch.__version__,
                "threads": 1 if args.device == "cpu" else None,
                "peak_memory": "ru_maxrss rise (CPU) / "
                "max_memory_allocated rise (CUDA) over the pre-call value",
                "rows": rows,
                "summary": summary,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
