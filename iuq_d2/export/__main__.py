"""Command line of iuq_d2.export: ``python -m iuq_d2.export --help``."""

import argparse
from typing import List, Optional

from .exporter import DEFAULT_OPSET, FORMATS, export


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m iuq_d2.export",
        description="Export a CondInst or IUQ-CondInst checkpoint to ONNX or TorchScript.",
    )
    parser.add_argument("--config-file", required=True, help="the config the model trained with")
    parser.add_argument("--weights", required=True, help="checkpoint (.pth or .pkl)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx")
    parser.add_argument("--output", required=True, help="folder for the model and export.json")
    parser.add_argument("--sample-image", help="image file to trace with (default: a random image)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 11)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    path = export(
        args.config_file,
        args.weights,
        args.format,
        args.output,
        args.opts,
        args.sample_image,
        args.opset,
    )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
