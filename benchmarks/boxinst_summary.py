#!/usr/bin/env python
"""BoxInst (boxes only) against CondInst (masks) at the demo budget on both embedded datasets:
mask AP mean and sample standard deviation over seeds, and BoxInst's share of CondInst's mean,
from the ablation JSON files (BoxInst: ablation_boxinst_*; CondInst: the 3-seed v35 runs of the
same recipe). Writes benchmarks/results/boxinst_vs_condinst.json and prints a markdown table.

    python benchmarks/boxinst_summary.py
"""

import json
import os
import statistics

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SOURCES = {"BoxInst": "ablation_boxinst_{}_cpu.json", "CondInst": "ablation_v35_{}_cpu.json"}
TARGET = 0.75  # the bar: BoxInst at least 75% of CondInst's mask AP


def seeds_of(path: str, variant: str):
    """{seed: run} of ``variant`` in the ablation JSON at ``path`` ({} if it is missing)."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    return {r["seed"]: r for r in data["runs"] if r["variant"] == variant}


def stats(values):
    return {
        "mean": statistics.mean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def main() -> None:
    summary = {}
    print("| dataset | model | seeds | mask AP | box AP | mask AP per seed |")
    print("|---|---|---|---|---|---|")
    for dataset in ("shapes", "cells"):
        entry = {}
        for variant, pattern in SOURCES.items():
            runs = seeds_of(os.path.join(RESULTS, pattern.format(dataset)), variant)
            seeds = sorted(runs)
            entry[variant] = {
                "source": pattern.format(dataset),
                "seeds": seeds,
                "segm_AP": stats([runs[s]["segm_AP"] for s in seeds]),
                "bbox_AP": stats([runs[s]["bbox_AP"] for s in seeds]),
            }
            segm, bbox = entry[variant]["segm_AP"], entry[variant]["bbox_AP"]
            if seeds:
                spread = f" ± {segm['std']:.1f}" if segm["std"] is not None else ""
                bspread = f" ± {bbox['std']:.1f}" if bbox["std"] is not None else ""
                per_seed = " / ".join(f"{v:.1f}" for v in segm["values"])
                print(
                    f"| {dataset} | {variant} | {len(seeds)} | {segm['mean']:.1f}{spread} | "
                    f"{bbox['mean']:.1f}{bspread} | {per_seed} |"
                )
        box, mask = entry["BoxInst"]["segm_AP"]["mean"], entry["CondInst"]["segm_AP"]["mean"]
        entry["ratio_of_means"] = None if box is None or mask is None else box / mask
        entry["target"] = TARGET
        summary[dataset] = entry
    for dataset, entry in summary.items():
        if entry["ratio_of_means"] is not None:
            seeds = len(entry["BoxInst"]["seeds"])
            print(
                f"{dataset}: BoxInst / CondInst mask AP = {entry['ratio_of_means']:.3f} "
                f"(target {TARGET}; BoxInst seeds {seeds})"
            )
    with open(os.path.join(RESULTS, "boxinst_vs_condinst.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
