"""Instance-unique representations (ours): a supervised contrastive loss that asks the mask
features F of one instance's pixels to be closer to each other than to any other instance's,
in the same image or in the other images of the global batch.

Why: the dynamic mask head sees only (relative position, F). Where another image's look-alike
sits at a query's own footprint the inter-scene loss can silence it only by lowering the
query's own logits, since F, trained by the mask loss alone, carries no identity to tell the
two apart (docs/method.md). This term gives F that identity directly, through a small
projection (training only, as in pixel-contrastive segmentation), so that the queries have
something to be unique on.
"""

from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils import comm
from torch import Tensor, nn
from torch.nn import functional as F

from ...layers.instance_contrast import instance_contrast_loss
from ...utils.comm import all_gather_rows
from .inter_scene import random_subset, sample_instance_cells

NEGATIVE_SCOPES = ("all", "other_images")
# An instance is named image_id * _PER_IMAGE + its index among its image's instances, so that
# the same image twice in a global batch (a repeat-factor sampler) is not its own negative.
_PER_IMAGE = 1 << 16


def build_projection(in_channels: int, dims: Sequence[int]) -> nn.Module:
    """Linear layers with ReLU between them, ``in_channels`` -> dims[0] -> ... -> dims[-1];
    the identity for no dims (the contrast then acts on F itself)."""
    layers: List[nn.Module] = []
    for i, dim in enumerate(dims):
        layers.append(nn.Linear(in_channels, dim))
        if i < len(dims) - 1:
            layers.append(nn.ReLU(inplace=True))
        in_channels = dim
    return nn.Sequential(*layers) if layers else nn.Identity()


class InstanceContrastCriterion(nn.Module):
    """``loss_contrast``: ``pixels_per_instance`` cells of every ground-truth instance are
    embedded (F at the cell, projected, L2-normalised); at most ``max_anchors`` of this
    process's cells are anchors, every cell of the global batch is a key (other ranks' keys
    detached). Negatives are all other instances' cells, or with ``negatives`` "other_images"
    only those of other images (the dataset-level uniqueness of the paper, without asking
    neighbours in one image to differ)."""

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        projection_dims: Sequence[int],
        feat_stride: int,
        weight: float,
        temperature: float,
        pixels_per_instance: int,
        max_anchors: int,
        negatives: str = "all",
    ):
        super().__init__()
        if negatives not in NEGATIVE_SCOPES:
            raise ValueError(
                f"MODEL.IUQ.CONTRAST.NEGATIVES must be one of {NEGATIVE_SCOPES}, got {negatives!r}"
            )
        if pixels_per_instance < 2:
            raise ValueError(
                "MODEL.IUQ.CONTRAST.PIXELS_PER_INSTANCE must be at least 2 (an anchor needs "
                f"a positive of its own instance), got {pixels_per_instance}"
            )
        if temperature <= 0:
            raise ValueError(f"MODEL.IUQ.CONTRAST.TEMPERATURE must be > 0, got {temperature}")
        if max_anchors == 0 or max_anchors < -1:
            raise ValueError(
                f"MODEL.IUQ.CONTRAST.MAX_ANCHORS must be positive or -1 (all), got {max_anchors}"
            )
        self.projection = build_projection(in_channels, projection_dims)
        self.feat_stride = feat_stride
        self.weight = weight
        self.temperature = temperature
        self.pixels_per_instance = pixels_per_instance
        self.max_anchors = max_anchors
        self.negatives = negatives

    @classmethod
    def from_config(cls, cfg, in_channels: int, feat_stride: int):
        contrast = cfg.MODEL.IUQ.CONTRAST
        return {
            "in_channels": in_channels,
            "projection_dims": list(contrast.PROJECTION_DIMS),
            "feat_stride": feat_stride,
            "weight": contrast.LOSS_WEIGHT,
            "temperature": contrast.TEMPERATURE,
            "pixels_per_instance": contrast.PIXELS_PER_INSTANCE,
            "max_anchors": contrast.MAX_ANCHORS,
            "negatives": contrast.NEGATIVES,
        }

    def forward(
        self, mask_feats: Tensor, gt_instances: List[Instances], image_ids: Tensor
    ) -> Dict[str, Tensor]:
        images, rows, cols, instances = sample_instance_cells(
            gt_instances, mask_feats.shape[-2:], self.feat_stride, self.pixels_per_instance
        )
        first_of_image = torch.tensor(
            [0] + [len(x) for x in gt_instances[:-1]], device=instances.device
        ).cumsum(0)
        local_image_ids = image_ids[images]
        instances = local_image_ids * _PER_IMAGE + instances - first_of_image[images]
        # In float32 under autocast too: similarities / temperature feed exp.
        with torch.autocast(mask_feats.device.type, enabled=False):
            feats = mask_feats[images, :, rows, cols].float()
            embeddings = F.normalize(self.projection(feats), dim=1)
        (keys, key_instances, key_image_ids), counts = all_gather_rows(
            embeddings.detach(), instances, local_image_ids
        )
        # This process's keys stay attached; its rows start after the lower ranks'.
        start = sum(counts[: comm.get_rank()])
        keys = torch.cat([keys[:start], embeddings, keys[start + len(embeddings) :]])

        anchor_rows = random_subset(len(embeddings), self.max_anchors, embeddings.device)
        if anchor_rows is None:
            anchor_rows = torch.arange(len(embeddings), device=embeddings.device)
        key_mask = None
        if self.negatives == "other_images":
            key_mask = local_image_ids[anchor_rows, None] != key_image_ids[None, :]
        loss = instance_contrast_loss(
            embeddings[anchor_rows],
            keys,
            instances[anchor_rows],
            key_instances,
            self.temperature,
            key_mask=key_mask,
            anchor_key_index=anchor_rows + start,
        )
        return {"loss_contrast": loss * self.weight}
