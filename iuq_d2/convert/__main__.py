"""Convert another code base's checkpoint into one that iuq_d2 loads with MODEL.WEIGHTS.

    python -m iuq_d2.convert mmdet condinst_r50_fpn_ms-poly-90k_coco_instance_*.pth OUT.pth

then evaluate or fine-tune with configs/CondInst/mmdet_R_50_ms_poly_90k.yaml.
"""

import argparse
from typing import List, Optional

import torch

from ..engine.checkpoint import atomic_write
from .mmdetection import convert_mmdet_condinst, read_mmdet_state_dict

COCO_NUM_CLASSES = 80


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m iuq_d2.convert", description=__doc__)
    parser.add_argument("source", choices=["mmdet"], help="code base that wrote the input")
    parser.add_argument("input", help="mmdetection 3.x R-50 CondInst checkpoint (.pth)")
    parser.add_argument("output", help="where to write the converted checkpoint (.pth)")
    args = parser.parse_args(argv)
    weights = convert_mmdet_condinst(read_mmdet_state_dict(args.input))
    converted = {"model": weights, "__author__": f"mmdetection ({args.input}) via iuq_d2.convert"}
    atomic_write(args.output, lambda f: torch.save(converted, f))
    num_classes = weights["proposal_generator.fcos_head.cls_logits.weight"].shape[0]
    print(f"wrote {args.output}: {len(weights)} tensors, {num_classes} classes")
    if num_classes != COCO_NUM_CLASSES:
        print(f"load it with MODEL.FCOS.NUM_CLASSES {num_classes}")
    return args.output


if __name__ == "__main__":
    main()
