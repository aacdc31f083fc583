#!/usr/bin/env python
"""How far a trained checkpoint already is from the equivariance that the query term asks for,
per kind of view transform: the views' dice loss with their own features F(g(I)) against the
same queries on g(F(I)), the warped features of the original (the query-equivariance term
without its weight), on the same valid cells.

    python benchmarks/equivariance_gap.py --run output/ablation_v2/cells/CondInst_seed1 \
        --batches 20 --out benchmarks/results/equivariance_gap_cells_CondInst_seed1.json

``--run`` is a training output directory (its config.yaml and model_final.pth). Batches come
from the training loader with the IUQ mapper (training augmentation, then the view), in
training mode (BatchNorm statistics of the batch of originals and views), without gradient.
A gap near 1 means the model is already equivariant to that transform and the term has little
to teach; a large one means the term would change the representation.
"""

import argparse
import json
import os
import statistics
from typing import Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from iuq_d2.engine.config_loader import load_config
from iuq_d2.engine.trainer import Trainer
from iuq_d2.modeling.iuq.equivariance import view_inputs, view_queries

# Kind of view -> MODEL.IUQ.EQUI overrides. Every crop is aligned to the stride of P5, so with
# scale 1 the warp is exact indexing and only the network's own departure from equivariance
# (and the crop's new borders) remains.
TRANSFORMS = {
    "identity": ["SCALES", "(1.0,)", "CROP_SIZE", "(1.0,1.0)", "FLIP_PROB", "0.0"],
    "crop": ["SCALES", "(1.0,)", "FLIP_PROB", "0.0"],
    "rescale": ["CROP_SIZE", "(1.0,1.0)", "FLIP_PROB", "0.0"],
    "crop+rescale": ["FLIP_PROB", "0.0"],
    "flip": ["SCALES", "(1.0,)", "CROP_SIZE", "(1.0,1.0)", "FLIP_PROB", "1.0"],
    "defaults": [],
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="training output dir (config.yaml, weights)")
    parser.add_argument("--weights", help="checkpoint (default: RUN/model_final.pth)")
    parser.add_argument("--batches", type=int, default=20, help="batches per transform")
    parser.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=TRANSFORMS)
    parser.add_argument(
        "--seed", type=int, default=7, help="seed of every transform's sampling and views"
    )
    parser.add_argument("--out", help="write the results to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def view_config(run: str, transform: str, seed: int, opts: List[str]):
    equi = TRANSFORMS[transform]
    equi_opts = [f"MODEL.IUQ.EQUI.{k}" if i % 2 == 0 else k for i, k in enumerate(equi)]
    return load_config(
        os.path.join(run, "config.yaml"),
        [
            *("MODEL.META_ARCHITECTURE", "IUQCondInst", "MODEL.IUQ.INTER.ENABLED", "False"),
            *("MODEL.IUQ.EQUI.ENABLED", "True", "INPUT.DATASET_MAPPER_NAME", "iuq"),
            *("MODEL.IUQ.GRADIENT_LOG_PERIOD", "0", "SEED", str(seed)),
            *equi_opts,
            *opts,
        ],
    )


@torch.no_grad()
def measure(model, loader, batches: int) -> Dict[str, float]:
    """Mean over batches of the views' dice on F(g(I)) and on g(F(I)) (valid cells only)."""
    own, warped_loss, valid_frac = [], [], []
    loader = iter(loader)
    with EventStorage(0):
        while len(own) < batches:
            batch = next(loader)
            inputs = batch + view_inputs(batch)
            images = model.preprocess_image(inputs)
            gt = model.prepare_targets(inputs, images)
            outputs = model.forward_train(images, gt)
            n, feats = len(batch), outputs.mask_feats
            warped, valid = model.equivariance.warp(outputs, images, batch)
            queries = view_queries(outputs.queries, n, gt)
            if len(queries) == 0:
                continue
            own.append(model.mask_loss(feats[n:], queries, gt[n:], valid).item())
            warped_loss.append(model.mask_loss(warped, queries, gt[n:], valid).item())
            valid_frac.append(valid.float().mean().item())
    gaps = [w / o for w, o in zip(warped_loss, own)]
    return {
        "dice_own": statistics.mean(own),
        "dice_warped": statistics.mean(warped_loss),
        "gap": statistics.mean(warped_loss) / statistics.mean(own),
        "gap_batch_stdev": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
        "valid_frac": statistics.mean(valid_frac),
        "batches": len(own),
    }


def main(args: argparse.Namespace) -> dict:
    weights = args.weights or os.path.join(args.run, "model_final.pth")
    results = {"run": args.run, "weights": weights, "transforms": {}}
    for name in args.transforms:
        cfg = view_config(args.run, name, args.seed, args.opts)
        seed_all_rng(args.seed)
        model = build_model(cfg)
        DetectionCheckpointer(model).load(weights)
        model.train()
        results["transforms"][name] = measure(model, Trainer.build_train_loader(cfg), args.batches)
    print(f"\nEquivariance gap of {weights} ({args.batches} batches per transform)")
    print(f"{'view':<14} {'dice F(g(I))':>12} {'dice g(F(I))':>12} {'gap':>6} {'valid':>6}")
    for name, r in results["transforms"].items():
        print(
            f"{name:<14} {r['dice_own']:>12.4f} {r['dice_warped']:>12.4f} {r['gap']:>6.2f} "
            f"{r['valid_frac']:>6.2f}"
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main(parse_args())
