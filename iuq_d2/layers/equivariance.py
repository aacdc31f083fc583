"""Reference implementation of the representation-equivariance loss of IUQ (METHOD.md section
4), written with plain tensor ops so that a fused kernel can replace it and be checked
against it."""

import torch
from torch import Tensor

__all__ = ["feature_equivariance_loss"]


def feature_equivariance_loss(view_feats: Tensor, warped: Tensor, valid: Tensor) -> Tensor:
    """Squared difference between F(g(I)) and g(F(I)), averaged over channels and over the valid
    cells of the whole batch.

    Args:
        view_feats: [B, C, H, W] F(g(I)), the features computed on the views.
        warped: [B, C, H, W] g(F(I)), the originals' features warped to the views
            (``warp_to_view``).
        valid: [B, H, W] bool, the cells where both are defined.
    Returns:
        A scalar, computed in float32. Both inputs receive gradients (no stop-gradient): the
        term pulls the view pass and the original pass towards each other. Without any valid
        cell it is zero and still depends on both inputs, so that every parameter stays in the
        graph (DDP).
    """
    if view_feats.shape != warped.shape or view_feats.dim() != 4:
        raise ValueError(
            f"feature_equivariance_loss expects two [B, C, H, W] tensors of the same "
            f"shape, got {tuple(view_feats.shape)} and {tuple(warped.shape)}"
        )
    cells = view_feats.shape[:1] + view_feats.shape[2:]
    if valid.shape != cells:
        raise ValueError(f"valid must be [B, H, W] = {tuple(cells)}, got {tuple(valid.shape)}")
    a, b = view_feats.float(), warped.float()
    per_cell = (a - b).pow(2).mean(dim=1)
    valid = valid.bool()
    total = torch.where(valid, per_cell, per_cell.new_zeros(())).sum()
    return total / valid.sum().clamp(min=1)
