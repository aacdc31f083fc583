#!/usr/bin/env python
"""Mask-error budget of checkpoints: their mask AP with oracle-corrected masks (neighbours'
cells removed, all spill removed, ground-truth masks), and where their predicted foreground
lies. The ``no_neighbours`` gain bounds what instance uniqueness can add to a checkpoint's
masks directly (``tools/mask_oracle.py``).

    python -m tools.measure_mask_oracle --config-file configs/Demo/shapes_CondInst.yaml \
        --weights output/ablation_v2/shapes/CondInst_seed{1,2,3}/model_final.pth \
        --out benchmarks/results/mask_oracle_shapes.json [KEY VALUE ...]
"""

import argparse
import json
import os
import time
from dataclasses import asdict, fields
from typing import List, Optional

import numpy as np
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from iuq_d2.data import CondInstDatasetMapper
from iuq_d2.engine.config_loader import load_config
from tools.mask_oracle import FAR_PIXELS, ORACLES, SpillStats, ground_truth_masks, oracle_aps
from tools.mechanism import encode_image, map_for_evaluation


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, nargs="+", help="checkpoints (.pth)")
    parser.add_argument("--dataset", help="evaluation dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=0, help="its first N images (0: all)")
    parser.add_argument("--out", help="write the results to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def measure(cfg, weights: str, dataset: str, num_images: int) -> dict:
    model = build_model(cfg)
    DetectionCheckpointer(model).load(weights)
    model.eval()
    mapper = CondInstDatasetMapper(cfg, is_train=False)
    dicts = DatasetCatalog.get(dataset)
    dicts = dicts[:num_images] if num_images else dicts
    images = (
        (encode_image(model, map_for_evaluation(mapper, d)), ground_truth_masks(d)) for d in dicts
    )
    result = oracle_aps(model, dataset, images)
    return {
        "weights": weights,
        "num_images": result["num_images"],
        "spill": asdict(result["spill"]),
        "ap": result["ap"],
    }


def _std(values: np.ndarray) -> float:
    """Sample standard deviation, as ``ablation.py`` reports it (0 for one checkpoint)."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(runs: List[dict]) -> dict:
    """Mean and standard deviation over checkpoints of every AP, and of each oracle's gain."""
    summary = {}
    for oracle in ORACLES:
        for key in ("AP", "AP50", "AP75"):
            values = np.array([r["ap"][oracle][key] for r in runs])
            gains = values - np.array([r["ap"]["model"][key] for r in runs])
            summary[f"{oracle}/{key}"] = {"mean": values.mean(), "std": _std(values)}
            summary[f"{oracle}/{key}_gain"] = {"mean": gains.mean(), "std": _std(gains)}
    for key in (f.name for f in fields(SpillStats) if f.name.startswith("frac_")):
        values = np.array([r["spill"][key] for r in runs])
        summary[f"spill/{key}"] = {"mean": values.mean(), "std": _std(values)}
    return {k: {s: float(v) for s, v in d.items()} for k, d in summary.items()}


def print_table(results: dict) -> None:
    print(f"\nMask AP under oracle masks on {results['dataset']} (AP / AP75, gain over model)")
    print(f"{'checkpoint':<60} " + " ".join(f"{o:>20}" for o in ORACLES))
    for r in results["runs"]:
        base = r["ap"]["model"]
        cells = [
            f"{a['AP']:5.1f}/{a['AP75']:5.1f} ({a['AP'] - base['AP']:+4.1f})"
            for a in (r["ap"][o] for o in ORACLES)
        ]
        print(f"{r['weights'][-60:]:<60} " + " ".join(f"{c:>20}" for c in cells))
    s = results["summary"]
    print(
        f"{'mean over ' + str(len(results['runs'])):<60} "
        + " ".join(
            f"{s[o + '/AP']['mean']:5.1f} ({s[o + '/AP_gain']['mean']:+4.1f} ± "
            f"{s[o + '/AP_gain']['std']:3.1f})".rjust(20)
            for o in ORACLES
        )
    )
    print(
        "Predicted foreground of detections with an own instance: on it "
        f"{s['spill/frac_on_own']['mean']:.3f}, on neighbours "
        f"{s['spill/frac_on_neighbours']['mean']:.3f} (farther than {FAR_PIXELS} px from it "
        f"{s['spill/frac_on_neighbours_far']['mean']:.3f}), on background "
        f"{s['spill/frac_on_background']['mean']:.3f}"
    )


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    cfg = load_config(args.config_file, args.opts)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    runs = [measure(cfg, w, dataset, args.num_images) for w in args.weights]
    results = {
        "config_file": args.config_file,
        "opts": args.opts,
        "dataset": dataset,
        "runs": runs,
        "summary": summarize(runs),
    }
    results["seconds"] = time.perf_counter() - start
    print_table(results)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
