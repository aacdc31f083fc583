"""The dense mask head in plain PyTorch: the graph the other implementations are tested
against (AdelaiDet's math: a copy of the features per query, every activation kept)."""

from typing import Sequence, Tuple

import torch
from torch import Tensor

from ..dynamic_mlp import dynamic_mlp, parse_dynamic_params
from .common import relative_coords


def reference_dense_mask_logits(
    mask_feats: Tensor,
    params: Tensor,
    im_inds: Tensor,
    locations: Tensor,
    soi: Tensor,
    stride: int,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
) -> Tensor:
    """``DynamicMaskHead.forward`` before upsampling: the graph the other paths are tested
    against (keeps [Q, 2 + C, HW] inputs and [Q, hidden, HW] activations)."""
    num_queries = params.shape[0]
    channels, h, w = mask_feats.shape[1:]
    inputs = mask_feats[im_inds].reshape(num_queries, channels, h * w)
    if use_rel_coords:
        rel = relative_coords(locations, soi.float(), h, w, stride, inputs.dtype)
        inputs = torch.cat([rel, inputs], dim=1)
    weights, biases = parse_dynamic_params(params, list(layer_shapes))
    return dynamic_mlp(inputs, weights, biases).reshape(num_queries, 1, h, w)
