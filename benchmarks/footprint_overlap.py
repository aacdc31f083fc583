#!/usr/bin/env python
"""How many of the bank's overlay pairs land on the query's own instance, per dataset.

    python benchmarks/footprint_overlap.py --datasets shapes_train cells_train \
        --out benchmarks/results/footprint_overlap.json

With ``COORDS overlay`` a bank pixel is evaluated at its own position in its image, as if that
image were laid over the query's. Where that position falls on the query's own ground-truth
instance, the inter-scene loss asks the head to stay silent exactly where the mask loss asks it
to fire, on a pixel whose feature may look just like the query's own object. This measures how
common such pairs are, from the annotations alone (no model): each image is resized to a short
side of ``--short-side`` as in training, an instance's entries are its stride-8 cell centres (as
the bank samples them, equal weight per instance: the bank takes 50 per instance), and for random
pairs of images the fraction of a foreign instance's cells on the query instance's mask is
averaged over (query instance, foreign instance) pairs.
"""

import argparse
import json
import os
from typing import Dict, List

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.structures import polygons_to_bitmask

import iuq_d2.data  # noqa: F401  (registers the embedded datasets)

STRIDE = 8


def instance_masks(record: dict, short_side: int) -> List[np.ndarray]:
    """Full-resolution masks of a record's instances, resized to the training short side."""
    h, w = record["height"], record["width"]
    scale = short_side / min(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    return [
        polygons_to_bitmask([np.asarray(p) * scale for p in ann["segmentation"]], new_h, new_w)
        for ann in record["annotations"]
    ]


def cell_centres(mask: np.ndarray) -> np.ndarray:
    """[K, 2] (row, col) of the stride-8 cell centres inside a mask; the centre of its box if
    the instance covers none, as the bank does."""
    start = STRIDE // 2
    sub = mask[start::STRIDE, start::STRIDE]
    rows, cols = np.nonzero(sub)
    if len(rows):
        return np.stack([rows * STRIDE + start, cols * STRIDE + start], axis=1)
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return np.zeros((0, 2), dtype=np.int64)
    return np.array([[(ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2]])


def measure(name: str, num_pairs: int, short_side: int, seed: int) -> Dict[str, float]:
    records = DatasetCatalog.get(name)
    rng = np.random.default_rng(seed)
    fractions, on_any = [], []
    area = []
    for _ in range(num_pairs):
        a, b = rng.choice(len(records), size=2, replace=False)
        own = instance_masks(records[a], short_side)
        foreign = [cell_centres(m) for m in instance_masks(records[b], short_side)]
        foreign = [c for c in foreign if len(c)]
        for mask in own:
            area.append(mask.mean())
            h, w = mask.shape
            for cells in foreign:
                inside = (cells[:, 0] < h) & (cells[:, 1] < w)
                hit = np.zeros(len(cells), dtype=bool)
                hit[inside] = mask[cells[inside, 0], cells[inside, 1]]
                fractions.append(hit.mean())
                on_any.append(hit.any())
    return {
        "image_pairs": num_pairs,
        "instance_pairs": len(fractions),
        "own_footprint_pair_fraction": float(np.mean(fractions)),
        "foreign_instances_touching_own": float(np.mean(on_any)),
        "mean_instance_area_fraction": float(np.mean(area)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["shapes_train", "cells_train"])
    parser.add_argument("--num-pairs", type=int, default=300, help="random image pairs")
    parser.add_argument("--short-side", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/footprint_overlap.json")
    args = parser.parse_args()
    results = {n: measure(n, args.num_pairs, args.short_side, args.seed) for n in args.datasets}
    print("| dataset | pairs on own footprint | foreign instances touching it | instance area |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {100 * r['own_footprint_pair_fraction']:.2f}% "
            f"| {100 * r['foreign_instances_touching_own']:.1f}% "
            f"| {100 * r['mean_instance_area_fraction']:.2f}% |"
        )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
