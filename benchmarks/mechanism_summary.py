#!/usr/bin/env python
"""One table over many ``benchmarks/mechanism.py`` results: per dataset and variant, the mean and
spread over seeds of the inter-scene false firing at the foreign instances' own positions (all,
on the query's own instance when laid over its image, off it, the share of the firing that lies
on it, and the share of the default loss's gradient that comes from firing pixels), on a
look-alike moved to the query's relative position (all, on the moved own instance, off it), of
the mask sharpness and of how well the mask features identify instances. Files are named
``<dataset>_<variant>_seed<N>.json``.

    python benchmarks/mechanism_summary.py benchmarks/results/mechanism_ims8/*_seed*.json \
        --out benchmarks/results/mechanism_ims8/summary.json
"""

import argparse
import collections
import json
import math
import os
import re
import statistics
from typing import Dict, List, Tuple


def firing(placement: str, field: str = "pixel_frac_firing"):
    """Reader of one false-firing number; NaN in results written before ``placement`` was
    measured."""
    return lambda d: d["false_firing"].get(placement, {}).get(field, math.nan)


def share_on_own_instance(d: dict) -> float:
    """Of the matched detections' firing pixels, the fraction on the query's own instance."""
    parts = [d["false_firing"].get(k) for k in ("on_own_instance", "off_own_instance")]
    if None in parts:
        return math.nan
    on, off = (p["pixel_frac_firing"] * p["num_pixels"] for p in parts)
    return on / (on + off) if on + off else math.nan


def identity(key: str):
    """A feature-identity value; NaN for results written before it was measured."""
    return lambda d: d.get("identity", {}).get(key, math.nan)


def sharpness(key: str):
    """A mask-sharpness value; NaN for results written before ``key`` was measured."""
    return lambda d: d["sharpness"].get(key, math.nan)


# (column, how to read it from a mechanism.py result, factor for the table)
COLUMNS = (
    ("firing %", firing("own_position"), 100.0),
    ("foreign mean p", firing("own_position", "pixel_mean_prob"), 1.0),
    ("focal grad share firing %", firing("own_position", "grad_share_firing"), 100.0),
    ("on own inst. %", firing("on_own_instance"), 100.0),
    ("off own inst. %", firing("off_own_instance"), 100.0),
    ("firing share on own %", share_on_own_instance, 100.0),
    ("look-alike %", firing("relative"), 100.0),
    ("look-alike on own %", firing("relative_on_own_instance"), 100.0),
    ("look-alike off own %", firing("relative_off_own_instance"), 100.0),
    ("p on GT mask", sharpness("mean_prob_inside"), 1.0),
    ("p off mask in box", sharpness("mean_prob_outside"), 1.0),
    ("p mask interior", sharpness("mean_prob_interior"), 1.0),
    ("p mask border", sharpness("mean_prob_border"), 1.0),
    ("p ring outside", sharpness("mean_prob_ring"), 1.0),
    ("F NN own inst. in image %", identity("nn_same_instance_in_image"), 100.0),
    ("F NN own inst. overall %", identity("nn_same_instance_overall"), 100.0),
    ("F cos own inst.", identity("cos_same_instance"), 1.0),
    ("F cos other inst.", identity("cos_other_instance_same_image"), 1.0),
    ("F cos other image", identity("cos_other_image"), 1.0),
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
    print(f"{'dataset':8} {'variant':62} {'seeds':>5} {header}")
    summary = []
    for (dataset, variant), by_seed in sorted(rows.items()):
        columns = list(zip(*by_seed.values()))
        measured = [[v for v in c if not math.isnan(v)] for c in columns]
        means = [statistics.mean(c) if c else math.nan for c in measured]
        spreads = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in measured]
        cells = " ".join(
            f"{m * k:>9.3f} ± {s * k:5.3f}" for m, s, (_, _, k) in zip(means, spreads, COLUMNS)
        )
        print(f"{dataset:8} {variant:62} {len(by_seed):>5} {cells}")
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
