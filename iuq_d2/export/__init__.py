"""Export CondInst and IUQ-CondInst for deployment: ONNX (onnxruntime, TensorRT) or TorchScript,
one image in, final detections with masks at the input resolution out.

    python -m iuq_d2.export --config-file configs/Demo/shapes_IUQ.yaml \\
        --weights output/demo_shapes_IUQ/model_final.pth --format onnx --output export/
"""

from .exporter import (
    DYNAMIC_AXES,
    FORMATS,
    describe,
    example_image,
    export,
    export_config,
    export_onnx,
    export_torchscript,
    load_model,
)
from .traceable import INPUT_NAMES, OUTPUT_NAMES, TraceableCondInst

__all__ = [
    "DYNAMIC_AXES",
    "FORMATS",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "TraceableCondInst",
    "describe",
    "example_image",
    "export",
    "export_config",
    "export_onnx",
    "export_torchscript",
    "load_model",
]
