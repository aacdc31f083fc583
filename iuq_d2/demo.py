"""Train and evaluate on the embedded synthetic dataset on CPU, then draw predictions.

    python -m iuq_d2.demo                # IUQ-CondInst (configs/Demo/shapes_IUQ.yaml)
    python -m iuq_d2.demo --baseline     # plus plain CondInst with the same schedule and seed
    python -m iuq_d2.demo --boxinst      # BoxInst from the boxes alone, masks evaluated
    python -m iuq_d2.demo SOLVER.MAX_ITER 200   # config overrides for every run

This is what ``make demo`` runs. Each run writes its checkpoints, metrics.json, the COCO
evaluation, a folder ``vis/`` of validation images drawn as "ground truth | prediction" and
``training_curves.png`` (losses and AP against iteration) to its OUTPUT_DIR. The demo ends with
the box and mask AP of every run and where its pictures and curves are.
"""

import argparse
import math
import os
import time
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog

from .curves import last_evaluation, plot_training_curves, read_metrics
from .engine.config_loader import load_config
from .engine.entry import build_argument_parser
from .engine.entry import main as train_main
from .visualize import build_predictor, visualize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "IUQ-CondInst": os.path.join(REPO, "configs", "Demo", "shapes_IUQ.yaml"),
    "CondInst": os.path.join(REPO, "configs", "Demo", "shapes_CondInst.yaml"),
    "BoxInst": os.path.join(REPO, "configs", "Demo", "shapes_BoxInst.yaml"),
}
AP_COLUMNS = [f"{task}/{ap}" for task in ("bbox", "segm") for ap in ("AP", "AP50", "AP75")]


def run(name: str, opts: List[str], num_vis: int) -> Dict[str, Any]:
    """Train ``name``'s config, draw its predictions and curves; its APs and where it wrote."""
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
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    final = last_evaluation(read_metrics(metrics))  # the end-of-training evaluation
    predictor = build_predictor(config, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), opts)
    dataset = cfg.DATASETS.TEST[0]
    vis = os.path.join(cfg.OUTPUT_DIR, "vis")
    visualize(predictor, DatasetCatalog.get(dataset)[:num_vis], vis, dataset)
    curves = plot_training_curves(
        metrics, os.path.join(cfg.OUTPUT_DIR, "training_curves.png"), name
    )
    return {
        "ap": {key: final.get(key, math.nan) for key in AP_COLUMNS},
        "dataset": dataset,
        "iterations": cfg.SOLVER.MAX_ITER,
        "minutes": minutes,
        "output": cfg.OUTPUT_DIR,
        "pictures": vis,
        "curves": curves,
    }


def _row(first: str, bbox: str, segm: str, last: str) -> str:
    """A table line: the model, its bbox and segm columns (20 wide each), the rest."""
    return f"{first:<14} {bbox:>20} | {segm:>20}  {last}".rstrip()


def summary(results: Dict[str, Dict[str, Any]]) -> str:
    """The AP table of the runs, then where each one's pictures and curves are."""
    datasets = ", ".join(sorted({r["dataset"] for r in results.values()}))
    names = " ".join(f"{c.split('/')[1]:>6}" for c in AP_COLUMNS[:3])
    lines = [
        f"Demo results on {datasets} (COCO AP, %):",
        _row("", f"{'bbox':^20}", f"{'segm':^20}", ""),
        _row("model", names, names, f"{'iters':>6} {'min':>5}"),
    ]
    for name, r in results.items():
        bbox, segm = (
            " ".join(f"{r['ap'][c]:>6.1f}" for c in AP_COLUMNS[i : i + 3]) for i in (0, 3)
        )
        lines.append(_row(name, bbox, segm, f"{r['iterations']:>6} {r['minutes']:>5.1f}"))
    for name, r in results.items():
        lines.append(f"{name}")
        lines.append(f"  pictures (ground truth | prediction): {r['pictures']}{os.sep}")
        lines.append(f"  training curves: {r['curves']}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", action="store_true", help="also train plain CondInst")
    parser.add_argument(
        "--boxinst",
        action="store_true",
        help="train BoxInst on the boxes of the shapes data alone (its masks are not read) and "
        "evaluate its masks against the true ones, instead of IUQ-CondInst (with --baseline "
        "CondInst on the masks follows)",
    )
    parser.add_argument("--num-vis", type=int, default=8, help="validation images to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)

    names = ["BoxInst" if args.boxinst else "IUQ-CondInst"] + (
        ["CondInst"] if args.baseline else []
    )
    results = {name: run(name, args.opts, args.num_vis) for name in names}
    print("\n" + summary(results))
    return results


if __name__ == "__main__":
    main()
