"""The demo's summary pieces: training curves from a metrics.json, the AP of its last evaluation
and the table printed at the end."""

import json
import math
import struct

import pytest

from iuq_d2.curves import curves, last_evaluation, plot_training_curves, read_metrics
from iuq_d2.curves import main as curves_main
from iuq_d2.demo import AP_COLUMNS, summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

LOSSES = {"total_loss": 3.0, "loss_fcos_cls": 1.0, "loss_mask": 1.5, "loss_inter": 0.02}
EVALUATION = {"bbox/AP": 5.0, "bbox/AP50": 12.0, "bbox/AP75": 3.0, "segm/AP": 4.0}


def loss(key, iteration, run):
    return LOSSES[key] / (1 + iteration / 20) * (0.9 if run else 1.0)


def write_metrics(path, evaluated=True):
    """Lines as detectron2's JSONWriter writes them: losses every 20 iterations (with lr and
    timings) and an evaluation at iteration 40; then a run resumed from iteration 20 (a little
    different losses) evaluated after training."""
    lines = []
    for run, iterations in enumerate([(19, 39, 59), (39, 59, 79)]):
        for iteration in iterations:
            losses = {key: loss(key, iteration, run) for key in LOSSES}
            lines.append({"iteration": iteration, "lr": 0.001, "time": 0.2, **losses})
            if evaluated and iteration == iterations[-1 if run else 1]:
                ap = {key: value + run for key, value in EVALUATION.items()}
                lines.append({"iteration": iteration + 1, **ap})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == PNG_SIGNATURE
    return struct.unpack(">II", header[16:24])  # the IHDR chunk: width, height


@pytest.mark.parametrize("evaluated", [True, False])
def test_plot_training_curves_writes_a_png(tmp_path, evaluated):
    metrics = write_metrics(tmp_path / "metrics.json", evaluated)
    out = plot_training_curves(metrics, str(tmp_path / "curves.png"), "a run")
    width, height = png_size(out)
    assert (width, height) == ((1200, 450) if evaluated else (700, 450))
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_curves_command_line(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.json")
    assert curves_main([metrics, str(tmp_path / "out.png")]) == str(tmp_path / "out.png")
    png_size(tmp_path / "out.png")


def test_plot_training_curves_needs_losses(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"iteration": 10, "bbox/AP": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no losses"):
        plot_training_curves(str(tmp_path / "metrics.json"), str(tmp_path / "out.png"))


def test_read_metrics_drops_a_cut_last_line_and_a_resumed_run_replaces_iterations(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics(path)
    with open(path, "a") as f:
        f.write('{"iteration": 99, "total_lo')  # a run killed while writing
    records = read_metrics(str(path))
    assert records[-1]["iteration"] == 80
    iterations, values = curves(records, ["total_loss"])["total_loss"]
    assert iterations == [19, 39, 59, 79]
    assert values == pytest.approx([loss("total_loss", i, i > 19) for i in iterations])
    assert last_evaluation(records)["segm/AP"] == EVALUATION["segm/AP"] + 1
    assert last_evaluation(records[:2]) == {}


def test_summary_has_the_ap_table_and_where_the_outputs_are():
    ap = {key: float(i) for i, key in enumerate(AP_COLUMNS)}
    run = {
        "ap": ap,
        "dataset": "shapes_val",
        "iterations": 1400,
        "minutes": 7.5,
        "pictures": "out/vis",
        "curves": "out/training_curves.png",
    }
    text = summary({"IUQ-CondInst": run, "CondInst": dict(run, ap=dict.fromkeys(ap, math.nan))})
    lines = [line.split() for line in text.splitlines()]
    assert "shapes_val" in lines[0]
    assert lines[1] == ["bbox", "|", "segm"]
    assert " ".join(lines[2]) == "model AP AP50 AP75 | AP AP50 AP75 iters min"
    assert " ".join(lines[3]) == "IUQ-CondInst 0.0 1.0 2.0 | 3.0 4.0 5.0 1400 7.5"
    assert " ".join(lines[4]) == "CondInst nan nan nan | nan nan nan 1400 7.5"
    assert "out/vis" in text and "out/training_curves.png" in text
