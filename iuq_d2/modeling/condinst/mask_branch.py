"""CondInst's mask branch: fuses P3-P5 into the stride-8 mask feature F that every dynamic mask
head reads, with an optional auxiliary semantic loss on P3."""

import math
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.structures import Instances
from fvcore.nn import sigmoid_focal_loss_jit, weight_init
from torch import Tensor, nn

from ...layers.upsample import aligned_bilinear


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not norm)
    weight_init.c2_msra_fill(conv)
    layers: List[nn.Module] = [conv]
    if norm:
        layers.append(get_norm(norm, out_channels))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MaskBranch(nn.Module):
    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        in_channels: List[int],
        in_strides: List[int],
        channels: int,
        out_channels: int,
        num_convs: int,
        norm: str,
        semantic_loss_on: bool,
        num_classes: int,
        focal_alpha: float,
        focal_gamma: float,
        prior_prob: float,
    ):
        super().__init__()
        self.in_features = in_features
        self.in_strides = in_strides
        self.out_stride = in_strides[0]
        self.out_channels = out_channels
        self.refine = nn.ModuleList([_conv_norm_relu(c, channels, norm) for c in in_channels])
        tower: List[nn.Module] = [
            _conv_norm_relu(channels, channels, norm) for _ in range(num_convs)
        ]
        tower.append(nn.Conv2d(channels, out_channels, 1))
        weight_init.c2_msra_fill(tower[-1])
        self.tower = nn.Sequential(*tower)

        self.semantic_loss_on = semantic_loss_on
        if semantic_loss_on:
            self.num_classes = num_classes
            self.focal_alpha = focal_alpha
            self.focal_gamma = focal_gamma
            # Reads the finest input level (P3) directly, as AdelaiDet's checkpoints expect.
            self.seg_head = nn.Sequential(
                _conv_norm_relu(in_channels[0], channels, norm),
                _conv_norm_relu(channels, channels, norm),
            )
            self.logits = nn.Conv2d(channels, num_classes, 1)
            nn.init.normal_(self.logits.weight, std=0.01)
            nn.init.constant_(self.logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        branch = cfg.MODEL.CONDINST.MASK_BRANCH
        missing = [f for f in branch.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.CONDINST.MASK_BRANCH.IN_FEATURES: {missing} are not backbone "
                f"outputs (have {sorted(input_shape)})"
            )
        return {
            "in_features": branch.IN_FEATURES,
            "in_channels": [input_shape[f].channels for f in branch.IN_FEATURES],
            "in_strides": [input_shape[f].stride for f in branch.IN_FEATURES],
            "channels": branch.CHANNELS,
            "out_channels": branch.OUT_CHANNELS,
            "num_convs": branch.NUM_CONVS,
            "norm": branch.NORM,
            "semantic_loss_on": branch.SEMANTIC_LOSS_ON,
            "num_classes": cfg.MODEL.FCOS.NUM_CLASSES,
            "focal_alpha": cfg.MODEL.FCOS.LOSS_ALPHA,
            "focal_gamma": cfg.MODEL.FCOS.LOSS_GAMMA,
            "prior_prob": cfg.MODEL.FCOS.PRIOR_PROB,
        }

    def forward(self, features: Dict[str, Tensor], gt_instances: Optional[List[Instances]] = None):
        """Returns the mask feature [N, out_channels, H/stride, W/stride] and a (possibly empty)
        dict of losses."""
        x = None
        for refine, name, stride in zip(self.refine, self.in_features, self.in_strides):
            y = refine(features[name])
            if x is None:
                x = y
            else:
                x = x + aligned_bilinear(y, stride // self.out_stride)
        mask_feats = self.tower(x)
        losses = {}
        if self.training and self.semantic_loss_on:
            logits = self.logits(self.seg_head(features[self.in_features[0]]))
            losses["loss_sem"] = self.semantic_loss(logits, gt_instances)
        return mask_feats, losses

    def semantic_loss(self, logits: Tensor, gt_instances: List[Instances]) -> Tensor:
        """Focal loss of per-pixel classes at the branch's stride, normalised by the number of
        foreground pixels of this process's batch."""
        targets = torch.stack(
            [self.semantic_targets(inst, logits.shape[-2:]) for inst in gt_instances]
        )
        one_hot = torch.zeros_like(logits, dtype=torch.float32)
        fg = targets != self.num_classes
        one_hot.permute(0, 2, 3, 1)[fg, targets[fg]] = 1.0
        num_pos = torch.clamp(fg.sum().float(), min=1.0)
        loss = sigmoid_focal_loss_jit(
            logits.float(), one_hot, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum"
        )
        return loss / num_pos

    def semantic_targets(self, instances: Instances, size: Tuple[int, int]) -> Tensor:
        """Class index ([H, W], ``num_classes`` for background) at the centres of the branch's
        cells. Where instances overlap, the one with the smallest full-resolution mask area
        names the cell, as in AdelaiDet; the count of sampled cells, a cheaper proxy, can order
        two near-equal instances the other way."""
        h, w = size
        start = self.out_stride // 2
        full = instances.gt_bitmasks_full
        if len(instances) == 0:
            return torch.full((h, w), self.num_classes, dtype=torch.long, device=full.device)
        areas = full.flatten(1).sum(dim=1, dtype=torch.int64).float()
        cells = full[:, start :: self.out_stride, start :: self.out_stride][:, :h, :w].bool()
        covering = torch.where(
            cells, areas[:, None, None], torch.tensor(float("inf"), device=full.device)
        )
        smallest_area, smallest = covering.min(dim=0)
        target = instances.gt_classes[smallest]
        target[torch.isinf(smallest_area)] = self.num_classes
        return target
