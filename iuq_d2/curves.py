"""Plot a run's training curves from its ``metrics.json`` into a PNG.

    python -m iuq_d2.curves output/demo_shapes_IUQ/metrics.json curves.png

detectron2's JSONWriter appends one dict per write, with an ``iteration`` and the scalars that
changed since the last one: the losses every 20 iterations, the evaluation (``bbox/AP``,
``segm/AP``, ...) whenever it ran. The losses go in one panel (log scale: they differ by two
orders of magnitude) and, if the run was evaluated, the APs in a second one.
"""

import argparse
import json
import math
from typing import Dict, List, Optional, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

AP_KEYS = ("bbox/AP", "segm/AP")

Curve = Tuple[List[int], List[float]]


def read_metrics(metrics_json: str) -> List[Dict[str, float]]:
    """The records of ``metrics_json``; a last line cut short by a killed run is dropped."""
    with open(metrics_json) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for index, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if index != len(lines) - 1:
                raise
    return records


def last_evaluation(records: List[Dict[str, float]]) -> Dict[str, float]:
    """The scalars of the last record with an AP in it (the end-of-training evaluation)."""
    evaluated = [r for r in records if any(key in r for key in AP_KEYS)]
    return evaluated[-1] if evaluated else {}


def curves(records: List[Dict[str, float]], keys: List[str]) -> Dict[str, Curve]:
    """Each key's (iterations, values). A resumed run writes its iterations again from the
    checkpoint on: the later value of an iteration replaces the earlier one."""
    out = {}
    for key in keys:
        points = {r["iteration"]: r[key] for r in records if key in r and "iteration" in r}
        points = {i: v for i, v in points.items() if v is not None and math.isfinite(v)}
        if points:
            iterations = sorted(points)
            out[key] = (iterations, [points[i] for i in iterations])
    return out


def plot_training_curves(metrics_json: str, out_png: str, title: Optional[str] = None) -> str:
    """Write the losses (and APs, if evaluated) of ``metrics_json`` against iteration to
    ``out_png``; returns ``out_png``."""
    records = read_metrics(metrics_json)
    names = sorted({k for r in records for k in r if k == "total_loss" or k.startswith("loss_")})
    losses = curves(records, names)
    if not losses:
        raise ValueError(f"{metrics_json} has no losses (total_loss, loss_*) to plot")
    aps = curves(records, list(AP_KEYS))

    # A Figure on the Agg canvas rather than pyplot: headless, and no global backend to switch.
    fig = Figure(figsize=(12 if aps else 7, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if aps else 1, sharex=True, squeeze=False)
    ax = axes[0, 0]
    for name, (iterations, values) in losses.items():
        style = {"color": "black", "linewidth": 2} if name == "total_loss" else {"linewidth": 1}
        marker = "o" if len(iterations) < 10 else None  # a short run's points stay visible
        ax.plot(iterations, values, label=name, marker=marker, markersize=3, **style)
    if all(v > 0 for _, values in losses.values() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("training losses")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if aps:
        ax = axes[0, 1]
        for name, (iterations, values) in aps.items():
            (line,) = ax.plot(iterations, values, marker="o", label=name)
            ax.annotate(
                f"{values[-1]:.1f}",
                (iterations[-1], values[-1]),
                textcoords="offset points",
                xytext=(-4, 6),
                ha="right",
                color=line.get_color(),
            )
        ax.set_ylim(0, 1.15 * max(max(values) for _, values in aps.values()) + 1)
        ax.set_xlabel("iteration")
        ax.set_ylabel("COCO AP (%)")
        ax.set_title("evaluation")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return out_png


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics_json", help="a run's OUTPUT_DIR/metrics.json")
    parser.add_argument("out_png")
    parser.add_argument("--title", help="figure title (default: none)")
    args = parser.parse_args(argv)
    out = plot_training_curves(args.metrics_json, args.out_png, args.title)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
