"""Upsampling with CondInst's grid convention.

CondInst upsamples mask logits from the stride of the mask feature (8) to the mask output
stride (4) and then to the input resolution with this operator; its checkpoints were trained
with it, so the exact placement of samples matters for reproducing their accuracy.
"""

import torch.nn.functional as F
from torch import Tensor


def aligned_bilinear(x: Tensor, factor: int) -> Tensor:
    """Upsample [N, C, H, W] to [N, C, H * factor, W * factor].

    Input sample i lands on output index ``i * factor + factor // 2``; values in between are
    linear interpolations and values past the last sample repeat it.
    """
    if factor == 1:
        return x
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"aligned_bilinear needs a positive integer factor, got {factor}")
    h, w = x.shape[-2:]
    # One replicated row/column at the far side gives the last samples a right/bottom neighbour,
    # so that the interpolated output covers [0, H * factor) fully.
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    # Shift by half a stride: a sample describes the centre of its cell, not its corner.
    half = factor // 2
    x = F.pad(x, (half, 0, half, 0), mode="replicate")
    return x[:, :, : factor * h, : factor * w]
