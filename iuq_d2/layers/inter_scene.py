"""Reference implementation of the inter-scene (dataset-level) uniqueness loss.

Every query's dynamic mask head is evaluated on instance pixels of *other* images; each such
pair is a negative, penalised with a sigmoid focal loss against target 0. This module is the
PyTorch reference with the signature that a fused kernel must keep.
"""
from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dynamic_mlp import parse_dynamic_params


@dataclass
class InterSceneStats:
    num_pairs: Tensor  # valid (query, pixel) pairs
    frac_firing: Tensor  # fraction of valid pairs with probability > 0.5


def inter_scene_focal_loss(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    query_images: Tensor,
    pixel_feats: Tensor,
    pixel_anchors: Tensor,
    pixel_images: Tensor,
    layer_shapes: List[Tuple[int, int]],
    use_rel_coords: bool = True,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tuple[Tensor, InterSceneStats]:
    """Mean focal loss (target 0) of every query on every pixel of another image.

    The relative coordinates of the pair (q, n) are ``(query_anchors[q] - pixel_anchors[n]) /
    query_soi[q]``; the caller picks the anchors that implement "instance_centered" or
    "overlay" placement.

    Args:
        params: [Q, P] dynamic mask head parameters of the queries (the only input with
            gradient in training).
        query_anchors: [Q, 2]; query_soi: [Q] size of interest of each query's FPN level;
        query_images: [Q] int64 id of each query's source image.
        pixel_feats: [N, C] mask features; pixel_anchors: [N, 2]; pixel_images: [N] int64.
        layer_shapes: (out, in) per dynamic layer, the first taking ``2 + C`` inputs when
            ``use_rel_coords`` else ``C``.
    Returns:
        the loss (0 with the graph kept when no pair is valid) and statistics without gradient.
    """
    weights, biases = parse_dynamic_params(params, layer_shapes)
    num_queries, hidden = weights[0].shape[:2]
    dtype = params.dtype
    w0, b0, inputs = weights[0], biases[0], pixel_feats.to(dtype)
    if use_rel_coords:
        # The first layer is linear in [rel, feats] with rel = (a_q - a_n) / s_q, so
        # W_c rel = W_c a_q / s_q - (W_c / s_q) a_n: the query part folds into the bias and the
        # pixel part into one shared input matrix, making the layer a single GEMM over all pairs.
        w_coord = w0[:, :, :2] / query_soi.to(dtype)[:, None, None]
        b0 = b0 + torch.bmm(w_coord, query_anchors.to(dtype)[:, :, None]).squeeze(2)
        w0 = torch.cat([-w_coord, w0[:, :, 2:]], dim=2)
        inputs = torch.cat([pixel_anchors.to(dtype), inputs], dim=1)
    x = torch.addmm(b0.reshape(-1, 1), w0.reshape(num_queries * hidden, w0.shape[2]), inputs.t())
    x = x.view(num_queries, hidden, inputs.shape[0])
    for w, b in zip(weights[1:], biases[1:]):
        x = torch.bmm(w, F.relu(x)).add_(b[:, :, None])
    logits = x[:, 0, :].float()  # [Q, N]

    valid = query_images[:, None] != pixel_images[None, :]
    prob = logits.sigmoid()
    # Focal loss for target 0: (1 - alpha) * p^gamma * -log(1 - p), with -log(1 - p) = softplus(x).
    loss = (1.0 - alpha) * prob.pow(gamma) * F.softplus(logits)
    num_pairs = valid.sum()
    total = (loss * valid).sum()
    with torch.no_grad():
        firing = ((prob > 0.5) & valid).sum().float() / num_pairs.clamp(min=1)
    return total / num_pairs.clamp(min=1), InterSceneStats(num_pairs, firing)
