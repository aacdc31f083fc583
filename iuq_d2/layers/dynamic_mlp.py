"""The dynamic mask head's math: per-instance 1x1 convolutions whose weights are predicted.

CondInst's controller emits, for every query, one flat vector of ``num_dynamic_params``
numbers; this module fixes how that vector is cut into weights and biases. The layout is
AdelaiDet's (all weights first, layer by layer, each [out, in] row-major; then all biases), so
that its checkpoints produce the same masks.
"""

from typing import List, Tuple

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


def last_layer_scale(shapes: List[Tuple[int, int]], factor: float) -> Tensor:
    """[P] multipliers: ``factor`` on the last layer's weights and bias, 1 elsewhere.

    The last layer is linear, so scaling its parameters by 1/T divides every logit by T:
    sigmoid(x / T) without touching any consumer of the parameters.
    """
    sizes = [o * i for o, i in shapes] + [o for o, _ in shapes]
    scale = torch.ones(sum(sizes))
    weights_end = sum(sizes[: len(shapes)])
    last_out, last_in = shapes[-1]
    scale[weights_end - last_out * last_in : weights_end] = factor
    scale[-last_out:] = factor
    return scale


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
