#!/usr/bin/env python
"""Measure the mechanism of a checkpoint, not only its AP: inter-scene false firing of the
dynamic mask heads, mask sharpness and how well the mask features identify instances.

    python -m tools.measure_mechanism --config-file configs/Demo/shapes_IUQ.yaml \
        --weights output/demo_shapes_IUQ/model_final.pth --num-images 30 \
        --out benchmarks/results/mechanism_shapes_IUQ.json [KEY VALUE ...]

The definitions are in ``tools/mechanism.py``.
"""

import argparse
import json
import math
import os
import time
from dataclasses import asdict
from typing import List, Optional

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from iuq_d2.data import CondInstDatasetMapper
from iuq_d2.engine.config_loader import load_config
from tools.mechanism import (
    coco_mask_ap,
    encode_image,
    false_firing,
    feature_identity,
    map_for_evaluation,
    mask_sharpness,
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint (.pth)")
    parser.add_argument("--dataset", help="evaluation dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--num-images", type=int, default=30, help="its first N images")
    parser.add_argument(
        "--num-others",
        type=int,
        default=29,
        help="other images each image's queries are applied to",
    )
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument("--max-per-image", type=int, default=10, help="queries per image")
    parser.add_argument("--no-coco", action="store_true", help="skip the COCO mask AP")
    parser.add_argument("--out", help="write the results to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def print_table(results: dict) -> None:
    s = results["settings"]
    print(
        f"\nInter-scene false firing on {results['dataset']} ({results['num_images']} images; "
        f"queries: score >= {s['score_thresh']}, <= {s['max_per_image']} per image; "
        f"{s['num_others']} other images each)"
    )
    print(
        f"{'placement':<26} {'pairs':>7} {'pixels':>10}  {'p>0.5 pair/pixel':>17}  "
        f"{'mean p pair/pixel':>17}  {'grad share firing':>17}"
    )
    for name, f in results["false_firing"].items():
        print(
            f"{name:<26} {f['num_pairs']:>7} {f['num_pixels']:>10}  "
            f"{f['pair_frac_firing']:>8.4f}/{f['pixel_frac_firing']:<8.4f}  "
            f"{f['pair_mean_prob']:>8.4f}/{f['pixel_mean_prob']:<8.4f}  "
            f"{f.get('grad_share_firing', float('nan')):>17.4f}"
        )
    m = results["sharpness"]
    print(
        f"\nMask sharpness: {m['num_matched']} of {m['num_confident']} queries match a GT box; "
        f"mean p on the GT mask {m['mean_prob_inside']:.4f}, off it in the GT box "
        f"{m['mean_prob_outside']:.4f}; interior {m['mean_prob_interior']:.4f}, border "
        f"{m['mean_prob_border']:.4f}, ring outside {m['mean_prob_ring']:.4f}"
    )
    i = results["identity"]
    print(
        f"Mask features ({i['num_cells']} instance cells): nearest cell of the same instance "
        f"{i['nn_same_instance_in_image']:.4f} in its image, {i['nn_same_instance_overall']:.4f} "
        f"over all images; cosine to its instance {i['cos_same_instance']:.4f}, to other "
        f"instances of its image {i['cos_other_instance_same_image']:.4f}, to other images "
        f"{i['cos_other_image']:.4f}"
    )
    if "coco" in results:
        c = results["coco"]
        print(
            f"COCO mask AP on these images: AP {c['AP']:.1f}  AP50 {c['AP50']:.1f}  "
            f"AP75 {c['AP75']:.1f}"
        )


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    cfg = load_config(args.config_file, args.opts)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    model.eval()
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    mapper = CondInstDatasetMapper(cfg, is_train=False)
    dicts = DatasetCatalog.get(dataset)[: args.num_images]
    encoded = [encode_image(model, map_for_evaluation(mapper, d)) for d in dicts]
    selection = {"score_thresh": args.score_thresh, "max_per_image": args.max_per_image}
    firing = false_firing(
        model.mask_head,
        model.mask_branch.out_stride,
        encoded,
        num_others=args.num_others,
        **selection,
    )
    results = {
        "config_file": args.config_file,
        "weights": args.weights,
        "dataset": dataset,
        "num_images": len(encoded),
        "settings": {"num_others": min(args.num_others, len(encoded) - 1), **selection},
        "false_firing": {name: asdict(stats) for name, stats in firing.items()},
        "sharpness": asdict(mask_sharpness(encoded, model.mask_head.mask_out_stride, **selection)),
        "identity": asdict(feature_identity(encoded, model.mask_branch.out_stride)),
    }
    if not args.no_coco:
        results["coco"] = coco_mask_ap(model, dataset, encoded)
    results["seconds"] = time.perf_counter() - start
    print_table(results)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            # NaN (no pairs, no matches) is not JSON: null instead.
            json.dump(_finite(results), f, indent=2)
        print(f"\nwrote {args.out}")
    return results


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    main()
