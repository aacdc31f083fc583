#!/usr/bin/env python
"""Cost of the representation-equivariance term (the warp g(F(I)) and the L2/cosine distance),
forward + backward, at the mask-feature sizes of the demo and of R-50 at 800 px, against a
CondInst training step of the same model: does it deserve a fused kernel?

    python benchmarks/equivariance_profile.py --out benchmarks/results/equivariance_profile_cpu.json
"""

import argparse
import json
import statistics
import time

import torch

from iuq_d2.layers.equivariance import feature_equivariance_loss
from iuq_d2.layers.warp import warp_to_view

# name -> (views per step, mask-feature height, width): the demo (4 images of ~160 px) and
# R-50 at 800 x 1088 (8 originals + 8 views in a 16-image step), stride 8.
SIZES = {"demo": (2, 24, 32), "R50_800px": (8, 100, 136)}


def time_term(views: int, h: int, w: int, distance: str, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(views * 2, 8, h, w, generator=g, requires_grad=True)
    # A flip with a crop of one cell and no rescale, the common case, and a 0.75 rescale.
    affines = torch.tensor([[-1.0, 8.0 * w - 8.0, 1.0, -8.0], [0.75, 0.0, 0.75, 0.0]])
    affines = affines.repeat(views // 2 or 1, 1)[:views]
    sizes = [(8 * h, 8 * w)] * views
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        warped, valid = warp_to_view(feats[:views], affines, sizes, (h, w), sizes, 8)
        loss = feature_equivariance_loss(feats[views:], warped, valid, distance)
        loss.backward()
        times.append(time.perf_counter() - start)
        feats.grad = None
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    print("| size | views | F | distance | ms (fwd+bwd) |")
    print("|---|---|---|---|---|")
    for name, (views, h, w) in SIZES.items():
        for distance in ("l2", "cosine"):
            ms = 1000 * time_term(views, h, w, distance, args.repeats)
            rows.append(
                {"size": name, "views": views, "h": h, "w": w, "distance": distance, "ms": ms}
            )
            print(f"| {name} | {views} | 8x{h}x{w} | {distance} | {ms:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": "cpu", "threads": 1, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
