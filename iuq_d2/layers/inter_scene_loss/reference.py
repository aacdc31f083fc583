"""The inter-scene loss in plain PyTorch: the graph the fused paths are tested against. It keeps
[Q, hidden, N] intermediates, so it is for tests and small problems."""

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dynamic_mlp import fold_dynamic_params
from .pairs import InterSceneStats, entry_inputs, focal_loss_target0, inter_scene_weights


def reference_pair_logits(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    pixel_feats: Tensor,
    pixel_anchors: Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
) -> Tensor:
    """[Q, N] float32 logit of every query on every entry."""
    dtype = params.dtype
    weights, biases = fold_dynamic_params(
        params, query_anchors, query_soi, layer_shapes, use_rel_coords, dtype
    )
    inputs = entry_inputs(pixel_feats, pixel_anchors, use_rel_coords, dtype)
    num_queries, hidden = weights[0].shape[:2]
    w0, b0 = weights[0], biases[0]
    x = torch.addmm(b0.reshape(-1, 1), w0.reshape(num_queries * hidden, w0.shape[2]), inputs.t())
    x = x.view(num_queries, hidden, inputs.shape[0])
    for w, b in zip(weights[1:], biases[1:]):
        x = torch.bmm(w, F.relu(x)).add_(b[:, :, None])
    return x[:, 0, :].float()


def reference_inter_scene_focal_loss(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    query_images: Tensor,
    pixel_feats: Tensor,
    pixel_anchors: Tensor,
    pixel_images: Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
    alpha: float = 0.25,
    gamma: float = 2.0,
    normalization: str = "pairs",
) -> Tuple[Tensor, InterSceneStats]:
    """``inter_scene_focal_loss`` through autograd on the [Q, N] logits."""
    logits = reference_pair_logits(
        params, query_anchors, query_soi, pixel_feats, pixel_anchors, layer_shapes, use_rel_coords
    )
    qw, pw, num_pairs = inter_scene_weights(query_images, pixel_images, normalization)
    valid = query_images[:, None] != pixel_images[None, :]
    loss = focal_loss_target0(logits, alpha, gamma)
    total = (loss * (qw[:, None] * pw[None, :] * valid)).sum()
    with torch.no_grad():
        firing = ((logits.sigmoid() > 0.5) & valid).sum().float() / num_pairs.clamp(min=1)
    return total, InterSceneStats(num_pairs, firing)
