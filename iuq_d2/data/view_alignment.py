"""The grid the equivariance views are aligned to, from the backbone's output shapes.

A view's crop must shift every feature level fused into the mask feature F by whole cells (see
``views.sample_view_transforms``), so its alignment is the coarsest stride among those levels.
The strides are the backbone's own (``Backbone.output_shape()``), not guessed from the level
names, so that a backbone with other names or strides aligns the views to its real grid.
"""

from typing import Dict, Mapping, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

__all__ = ["backbone_output_shapes", "view_alignment", "view_alignment_of_config"]


def backbone_output_shapes(cfg: CfgNode) -> Dict[str, ShapeSpec]:
    """``build_backbone(cfg).output_shape()``, with the backbone built on the meta device:
    its parameters get no memory and no initialisation, so this costs tens of milliseconds
    even for a ResNet-101 (a real build takes about a second) and suits a mapper's set-up."""
    with torch.device("meta"):
        return build_backbone(cfg).output_shape()


def view_alignment(shapes: Mapping[str, ShapeSpec], in_features: Sequence[str]) -> int:
    """The coarsest stride among the backbone outputs ``in_features`` (those fused into F)."""
    if not in_features or any(name not in shapes for name in in_features):
        raise ValueError(
            f"MODEL.CONDINST.MASK_BRANCH.IN_FEATURES must name backbone outputs "
            f"({sorted(shapes)}), got {list(in_features)}"
        )
    return max(shapes[name].stride for name in in_features)


def view_alignment_of_config(cfg: CfgNode) -> int:
    """:func:`view_alignment` of the backbone and mask branch that ``cfg`` builds."""
    return view_alignment(backbone_output_shapes(cfg), cfg.MODEL.CONDINST.MASK_BRANCH.IN_FEATURES)
