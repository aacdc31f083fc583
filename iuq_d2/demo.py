"""Train and evaluate on the embedded synthetic dataset on CPU, then draw predictions.

    python -m iuq_d2.demo                # IUQ-CondInst (configs/Demo/shapes_IUQ.yaml)
    python -m iuq_d2.demo --baseline     # plus plain CondInst with the same schedule and seed
    python -m iuq_d2.demo SOLVER.MAX_ITER 200   # config overrides for every run

This is what ``make demo`` runs. Each run writes its checkpoints, metrics.json, the COCO
evaluation and a folder ``vis/`` of predictions on validation images to its OUTPUT_DIR.
"""

import argparse
import json
import os
import time
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog

from .engine.config_loader import load_config
from .engine.entry import build_argument_parser
from .engine.entry import main as train_main
from .visualize import build_predictor, visualize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "IUQ-CondInst": os.path.join(REPO, "configs", "Demo", "shapes_IUQ.yaml"),
    "CondInst": os.path.join(REPO, "configs", "Demo", "shapes_CondInst.yaml"),
}


def run(name: str, opts: List[str], num_vis: int) -> Dict[str, float]:
    config = CONFIGS[name]
    if not os.path.exists(config):
        raise FileNotFoundError(
            f"{config} not found: run the demo from a source checkout of iuq_d2"
        )
    args = build_argument_parser().parse_args(["--config-file", config, *opts])
    cfg = load_config(args.config_file, args.opts)
    start = time.perf_counter()
    train_main(args)
    minutes = (time.perf_counter() - start) / 60
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        final = [json.loads(line) for line in f][-1]  # the end-of-training evaluation
    predictor = build_predictor(config, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), 0.05, opts)
    dataset = cfg.DATASETS.TEST[0]
    files = [d["file_name"] for d in DatasetCatalog.get(dataset)[:num_vis]]
    visualize(predictor, files, os.path.join(cfg.OUTPUT_DIR, "vis"), dataset)
    return {
        "segm AP": final.get("segm/AP", float("nan")),
        "bbox AP": final.get("bbox/AP", float("nan")),
        "iterations": cfg.SOLVER.MAX_ITER,
        "minutes": minutes,
        "output": cfg.OUTPUT_DIR,
    }


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true", help="also train plain CondInst")
    parser.add_argument("--num-vis", type=int, default=8, help="validation images to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)

    names = ["IUQ-CondInst"] + (["CondInst"] if args.baseline else [])
    results = {name: run(name, args.opts, args.num_vis) for name in names}
    print("\nDemo results on shapes_val (COCO AP, %):")
    print(f"{'model':<14} {'segm AP':>8} {'bbox AP':>8} {'iters':>6} {'minutes':>8}  output")
    for name, r in results.items():
        print(
            f"{name:<14} {r['segm AP']:>8.1f} {r['bbox AP']:>8.1f} {r['iterations']:>6} "
            f"{r['minutes']:>8.1f}  {r['output']}"
        )
    return results


if __name__ == "__main__":
    main()
