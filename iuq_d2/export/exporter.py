"""Build a trained CondInst (or IUQ-CondInst) from its config and weights and write it as ONNX or
TorchScript."""

import json
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from ..engine.checkpoint import StrictCheckpointer
from ..engine.config_loader import load_config
from .traceable import INPUT_NAMES, OUTPUT_NAMES, TraceableCondInst

FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}
# NonMaxSuppression needs 11; 11, 17 and 20 export and run in onnxruntime 1.32 alike.
DEFAULT_OPSET = 17
# Axes whose length the exported graph takes from its input, named as in the ONNX file.
DYNAMIC_AXES = {
    "image": {1: "height", 2: "width"},
    "boxes": {0: "detections"},
    "scores": {0: "detections"},
    "classes": {0: "detections"},
    "masks": {0: "detections", 1: "height", 2: "width"},
}


def export_config(config_file: str, weights: str, opts: Sequence[str] = ()) -> CfgNode:
    """The config to export with: ``config_file`` and ``opts``, on the CPU."""
    return load_config(config_file, [*opts, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights])


def load_model(cfg: CfgNode) -> torch.nn.Module:
    """The model of ``cfg`` in eval mode, with all of its weights loaded from MODEL.WEIGHTS
    (:class:`StrictCheckpointer`).

    An IUQ-CondInst checkpoint loads with its own config (the bank's buffers load and are then
    left out of the export) or with the CondInst config, which ignores the training-only
    ``inter_scene.*`` keys: both export the same network.
    """
    model = build_model(cfg)
    StrictCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def example_image(cfg: CfgNode, seed: int = 0) -> torch.Tensor:
    """A random image [3, H, W] at the test resolution, to trace with. Any content works: the
    graph records every data-dependent size as an operator, not as the example's value."""
    size = cfg.INPUT.MIN_SIZE_TEST
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=generator).float()


def export_onnx(
    model: torch.nn.Module, image: torch.Tensor, path: str, opset: int = DEFAULT_OPSET
) -> None:
    """Write ``TraceableCondInst(model)`` to ``path``, with dynamic image size and detection
    count. With the TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``
    and records the data-dependent detection count as NonZero/TopK/NonMaxSuppression outputs;
    the dynamo exporter needs ``onnxscript`` besides."""
    with torch.no_grad():
        torch.onnx.export(
            TraceableCondInst(model).eval(),
            (image,),
            path,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=DYNAMIC_AXES,
            opset_version=opset,
            dynamo=False,
        )


def export_torchscript(model: torch.nn.Module, image: torch.Tensor, path: str) -> None:
    """Trace ``TraceableCondInst(model)`` and save it; loading needs ``import torchvision``
    first (for its NMS op)."""
    with torch.no_grad():
        traced = torch.jit.trace(TraceableCondInst(model).eval(), (image,), check_trace=False)
    traced.save(path)


def describe(cfg: CfgNode) -> Dict[str, Any]:
    """What a deployment needs besides the graph: the input convention, the thresholds baked
    into it and the class names."""
    dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    classes = MetadataCatalog.get(dataset).get("thing_classes") if dataset else None
    return {
        "input": {
            "name": INPUT_NAMES[0],
            "shape": ["3", "height", "width"],
            "dtype": "float32",
            "format": cfg.INPUT.FORMAT,
            "range": "0-255, normalised inside the graph",
            "test_size": {"min": cfg.INPUT.MIN_SIZE_TEST, "max": cfg.INPUT.MAX_SIZE_TEST},
        },
        "outputs": {
            "boxes": "float32 [K, 4] x0, y0, x1, y1 in input pixels",
            "scores": "float32 [K], decreasing",
            "classes": "int64 [K], index into thing_classes",
            "masks": "bool [K, height, width]",
        },
        "score_threshold": cfg.MODEL.FCOS.INFERENCE_TH_TEST,
        "nms_threshold": cfg.MODEL.FCOS.NMS_TH,
        "max_detections": cfg.MODEL.FCOS.POST_NMS_TOPK_TEST,
        "thing_classes": classes,
    }


def export(
    config_file: str,
    weights: str,
    fmt: str,
    output_dir: str,
    opts: Sequence[str] = (),
    sample_image: Optional[str] = None,
    opset: int = DEFAULT_OPSET,
) -> str:
    """Export to ``output_dir/model.onnx`` or ``model.ts`` plus ``export.json`` (see
    :func:`describe`); returns the model's path. Traces with the image file ``sample_image``
    when given, else with a random image."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    cfg = export_config(config_file, weights, opts)
    model = load_model(cfg)
    if sample_image is None:
        image = example_image(cfg)
    else:
        pixels = read_image(sample_image, format=cfg.INPUT.FORMAT)
        image = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float()
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FORMATS[fmt])
    if fmt == "onnx":
        export_onnx(model, image, path, opset)
    else:
        export_torchscript(model, image, path)
    info = {"format": fmt, "config": config_file, "weights": weights, **describe(cfg)}
    with open(os.path.join(output_dir, "export.json"), "w") as f:
        json.dump(info, f, indent=2)
    return path
