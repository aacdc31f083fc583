#!/usr/bin/env python
"""One table over many ``benchmarks/mechanism.py`` results: per dataset and variant, the mean and
spread over seeds of the inter-scene false firing at the foreign instances' own positions and of
the mask sharpness. Files are named ``<dataset>_<variant>_seed<N>.json``.

    python benchmarks/mechanism_summary.py benchmarks/results/mechanism_ims8/*_seed*.json \
        --out benchmarks/results/mechanism_ims8/summary.json
"""

import argparse
import collections
import json
import os
import re
import statistics
from typing import Dict, List, Tuple

# (column, how to read it from a mechanism.py result, factor for the table)
COLUMNS = (
    ("firing %", lambda d: d["false_firing"]["own_position"]["pixel_frac_firing"], 100.0),
    ("foreign mean p", lambda d: d["false_firing"]["own_position"]["pixel_mean_prob"], 1.0),
    ("p on GT mask", lambda d: d["sharpness"]["mean_prob_inside"], 1.0),
    ("p off mask in box", lambda d: d["sharpness"]["mean_prob_outside"], 1.0),
)
NAME = re.compile(r"^(?P<dataset>[^_]+)_(?P<variant>.+)_seed(?P<seed>\d+)\.json$")


def read(paths: List[str]) -> Dict[Tuple[str, str], Dict[int, List[float]]]:
    """(dataset, variant) -> seed -> column values."""
    rows: Dict[Tuple[str, str], Dict[int, List[float]]] = collections.defaultdict(dict)
    for path in paths:
        match = NAME.match(os.path.basename(path))
        if match is None:
            raise ValueError(f"{path}: expected a name <dataset>_<variant>_seed<N>.json")
        with open(path) as f:
            result = json.load(f)
        key = (match["dataset"], match["variant"])
        rows[key][int(match["seed"])] = [get(result) for _, get, _ in COLUMNS]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="mechanism.py JSON files")
    parser.add_argument("--out", help="write the summary to this JSON file")
    args = parser.parse_args()
    rows = read(args.results)
    header = " ".join(f"{name:>17}" for name, _, _ in COLUMNS)
    print(f"{'dataset':8} {'variant':44} {'seeds':>5} {header}")
    summary = []
    for (dataset, variant), by_seed in sorted(rows.items()):
        columns = list(zip(*by_seed.values()))
        means = [statistics.mean(c) for c in columns]
        spreads = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns]
        cells = " ".join(
            f"{m * k:>9.3f} ± {s * k:5.3f}" for m, s, (_, _, k) in zip(means, spreads, COLUMNS)
        )
        print(f"{dataset:8} {variant:44} {len(by_seed):>5} {cells}")
        names = [name for name, _, _ in COLUMNS]
        summary.append(
            {
                "dataset": dataset,
                "variant": variant,
                "seeds": sorted(by_seed),
                "mean": dict(zip(names, means)),
                "std": dict(zip(names, spreads)),
                "per_seed": {s: dict(zip(names, v)) for s, v in sorted(by_seed.items())},
            }
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
