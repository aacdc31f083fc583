"""CondInst's dynamic mask head: a tiny MLP per query, run on [relative coordinates, F]."""

from typing import List

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor, nn

from ...layers.dense_mask_head import dense_mask_logits
from ...layers.dynamic_mlp import (
    dynamic_layer_shapes,
    num_dynamic_params,
)
from ...layers.upsample import aligned_bilinear


class DynamicMaskHead(nn.Module):
    """Holds no learnable weights: the controller predicts them per query.

    The relative coordinates of a pixel p for a query at location q of FPN level l are
    ``(q - p) / size_of_interest[l]``, so a query's mask is expressed in units of the object
    sizes its level is responsible for.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        channels: int,
        num_layers: int,
        disable_rel_coords: bool,
        sizes_of_interest: List[int],
        mask_out_stride: int,
        impl: str = "auto",
    ):
        super().__init__()
        self.in_channels = in_channels
        self.disable_rel_coords = disable_rel_coords
        self.mask_out_stride = mask_out_stride
        self.impl = impl
        fan_in = in_channels + (0 if disable_rel_coords else 2)
        self.layer_shapes = dynamic_layer_shapes(fan_in, channels, num_layers)
        self.num_params = num_dynamic_params(fan_in, channels, num_layers)
        self.register_buffer(
            "sizes_of_interest", torch.tensor(sizes_of_interest, dtype=torch.int64)
        )
        # Training forwards seen so far. AdelaiDet's checkpoints hold this buffer, so it stays.
        self.register_buffer("_iter", torch.zeros([1]))

    @classmethod
    def from_config(cls, cfg):
        head = cfg.MODEL.CONDINST.MASK_HEAD
        soi = list(cfg.MODEL.FCOS.SIZES_OF_INTEREST)
        return {
            "in_channels": cfg.MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS,
            "channels": head.CHANNELS,
            "num_layers": head.NUM_LAYERS,
            "disable_rel_coords": head.DISABLE_REL_COORDS,
            # The last level has no upper bound; twice the last bound normalises its queries.
            "sizes_of_interest": soi + [soi[-1] * 2],
            "mask_out_stride": cfg.MODEL.CONDINST.MASK_OUT_STRIDE,
            "impl": head.IMPL,
        }

    def forward(self, mask_feats: Tensor, mask_feat_stride: int, queries: Instances) -> Tensor:
        """Mask logits [Q, 1, H', W'] at ``mask_out_stride`` for the queries (fields
        ``mask_head_params``, ``locations``, ``fpn_levels``, ``im_inds``) on mask_feats
        [N, C, H, W] of stride ``mask_feat_stride``."""
        logits = self.feature_stride_logits(mask_feats, mask_feat_stride, queries)
        return aligned_bilinear(logits, mask_feat_stride // self.mask_out_stride)

    def feature_stride_logits(
        self, mask_feats: Tensor, mask_feat_stride: int, queries: Instances
    ) -> Tensor:
        """The logits of ``forward`` before upsampling: [Q, 1, H, W] at the features' stride."""
        return dense_mask_logits(
            mask_feats,
            queries.mask_head_params,
            queries.im_inds,
            queries.locations,
            self.sizes_of_interest.float()[queries.fpn_levels],
            mask_feat_stride,
            self.layer_shapes,
            use_rel_coords=not self.disable_rel_coords,
            impl=self.impl,
        )
