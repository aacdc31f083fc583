"""The FCOS head: classification and box towers shared over FPN levels."""

import math
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from torch import Tensor, nn


class Scale(nn.Module):
    """A learnable scalar per FPN level that rescales the box regression of that level."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _conv_tower(num_convs: int, channels: int, norm: str) -> nn.Sequential:
    """3x3 conv (+ norm) + ReLU blocks, flat so that parameter names match AdelaiDet's."""
    layers: List[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1, bias=True))
        if norm:
            layers.append(get_norm(norm, channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Towers and predictors. Outputs per level: class logits [N, K, H, W], box distances in
    units of the level's stride [N, 4, H, W], centerness logits [N, 1, H, W], and the box-tower
    features [N, C, H, W] that CondInst's controller reads."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_levels: int,
        num_classes: int,
        num_cls_convs: int,
        num_box_convs: int,
        num_share_convs: int,
        norm: str,
        prior_prob: float,
        use_scale: bool,
        use_relu: bool,
    ):
        super().__init__()
        self.share_tower = _conv_tower(num_share_convs, in_channels, norm)
        self.cls_tower = _conv_tower(num_cls_convs, in_channels, norm)
        self.bbox_tower = _conv_tower(num_box_convs, in_channels, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale() for _ in range(num_levels)]) if use_scale else None
        self.use_relu = use_relu

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        fcos = cfg.MODEL.FCOS
        channels = {input_shape[f].channels for f in fcos.IN_FEATURES}
        if len(channels) != 1:
            raise ValueError(
                f"MODEL.FCOS.IN_FEATURES {fcos.IN_FEATURES} have different channel "
                f"counts {sorted(channels)}; the head is shared across levels"
            )
        if fcos.USE_DEFORMABLE:
            raise ValueError("MODEL.FCOS.USE_DEFORMABLE=True is not supported by iuq_d2")
        if fcos.BOX_QUALITY != "ctrness":
            raise ValueError(f"MODEL.FCOS.BOX_QUALITY must be 'ctrness', got {fcos.BOX_QUALITY!r}")
        return {
            "in_channels": channels.pop(),
            "num_levels": len(fcos.IN_FEATURES),
            "num_classes": fcos.NUM_CLASSES,
            "num_cls_convs": fcos.NUM_CLS_CONVS,
            "num_box_convs": fcos.NUM_BOX_CONVS,
            "num_share_convs": fcos.NUM_SHARE_CONVS,
            "norm": "" if fcos.NORM == "none" else fcos.NORM,
            "prior_prob": fcos.PRIOR_PROB,
            "use_scale": fcos.USE_SCALE,
            "use_relu": fcos.USE_RELU,
        }

    def forward(self, features: List[Tensor]):
        logits, bbox_reg, ctrness, bbox_towers = [], [], [], []
        for level, feature in enumerate(features):
            feature = self.share_tower(feature)
            cls_tower = self.cls_tower(feature)
            bbox_tower = self.bbox_tower(feature)
            logits.append(self.cls_logits(cls_tower))
            ctrness.append(self.ctrness(bbox_tower))
            reg = self.bbox_pred(bbox_tower)
            if self.scales is not None:
                reg = self.scales[level](reg)
            bbox_reg.append(F.relu(reg) if self.use_relu else reg)
            bbox_towers.append(bbox_tower)
        return logits, bbox_reg, ctrness, bbox_towers
