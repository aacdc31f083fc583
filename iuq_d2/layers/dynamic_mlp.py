"""The dynamic mask head's math: per-instance 1x1 convolutions whose weights are predicted.

CondInst's controller emits, for every query, one flat vector of ``num_dynamic_params``
numbers; this module fixes how that vector is cut into weights and biases. The layout is
AdelaiDet's (all weights first, layer by layer, each [out, in] row-major; then all biases), so
that its checkpoints produce the same masks.
"""

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def dynamic_layer_shapes(in_channels: int, channels: int, num_layers: int) -> List[Tuple[int, int]]:
    """(out, in) of each layer: ``in_channels -> channels -> ... -> channels -> 1``."""
    shapes = []
    for layer in range(num_layers):
        fan_in = in_channels if layer == 0 else channels
        fan_out = 1 if layer == num_layers - 1 else channels
        shapes.append((fan_out, fan_in))
    return shapes


def num_dynamic_params(in_channels: int, channels: int, num_layers: int) -> int:
    return sum(o * i + o for o, i in dynamic_layer_shapes(in_channels, channels, num_layers))


def parse_dynamic_params(
    params: Tensor, shapes: List[Tuple[int, int]]
) -> Tuple[List[Tensor], List[Tensor]]:
    """Cut [Q, P] parameter vectors into per-layer weights [Q, out, in] and biases [Q, out]."""
    sizes = [o * i for o, i in shapes] + [o for o, _ in shapes]
    if params.shape[1] != sum(sizes):
        raise ValueError(
            f"dynamic mask head expects {sum(sizes)} parameters per query, got {params.shape[1]}"
        )
    chunks = torch.split(params, sizes, dim=1)
    num_layers = len(shapes)
    weights = [c.reshape(-1, o, i) for c, (o, i) in zip(chunks[:num_layers], shapes)]
    biases = list(chunks[num_layers:])
    return weights, biases


def dynamic_mlp(x: Tensor, weights: List[Tensor], biases: List[Tensor]) -> Tensor:
    """Apply each query's MLP to its own inputs.

    Args:
        x: [Q, C_in, N] inputs (N pixels per query).
        weights, biases: from ``parse_dynamic_params``.
    Returns:
        [Q, 1, N] logits; ReLU between layers, none after the last.
    """
    for layer, (w, b) in enumerate(zip(weights, biases)):
        x = torch.baddbmm(b.unsqueeze(2), w, x)
        if layer < len(weights) - 1:
            x = F.relu(x)
    return x


def autocast_off(device: torch.device) -> torch.autocast:
    """A region where autocast does not lower the precision that the hand-written paths chose:
    their fp32 accumulation and the exact cancellation of ``fold_dynamic_params``' terms."""
    return torch.autocast(device_type=device.type, enabled=False)


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp64 when any input is fp64 (gradcheck), else fp32 whatever the storage dtype: the
    hand-written paths accumulate in it."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def fold_dynamic_params(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool,
    dtype: torch.dtype,
) -> Tuple[List[Tensor], List[Tensor]]:
    """Per-layer weights [Q, out, in] and biases [Q, out] acting on inputs shared by all queries.

    With relative coordinates the first layer is linear in [rel, feats], rel = (a_q - a_n) / s_q,
    so W_c rel = W_c a_q / s_q - (W_c / s_q) a_n: the query part folds into the bias and the
    pixel part into a weight on ``[pixel anchors, pixel feats]``. The fused paths then need no
    per-pair coordinates. Differentiable in ``params``; O(Q * P). Computed in ``dtype`` even
    under autocast: the folded bias (about |W| x the anchors' scale) must cancel in the layer
    against the pixel term, which 16-bit rounding of either would spoil.
    """
    weights, biases = parse_dynamic_params(params.to(dtype), list(layer_shapes))
    if use_rel_coords:
        w0, b0 = weights[0], biases[0]
        w_coord = w0[:, :, :2] / query_soi.to(dtype)[:, None, None]
        with autocast_off(params.device):
            shift = torch.bmm(w_coord, query_anchors.to(dtype)[:, :, None]).squeeze(2)
        biases[0] = b0 + shift
        weights[0] = torch.cat([-w_coord, w0[:, :, 2:]], dim=2)
    return weights, biases
