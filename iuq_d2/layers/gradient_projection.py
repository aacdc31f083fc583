"""Per-row gradient surgery: the part of one loss's gradient that works against another's is
removed (the projection of PCGrad, Yu et al. 2020, row by row)."""

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor


class _ProjectConflict(torch.autograd.Function):
    """Identity forward; the backward projects each conflicting gradient row (see
    :func:`project_conflicting_gradient`)."""

    @staticmethod
    def forward(
        ctx, x: Tensor, protected: Tensor, on_backward: Optional[Callable[[Tensor], None]]
    ) -> Tensor:
        ctx.save_for_backward(protected)
        ctx.on_backward = on_backward
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None, None]:
        (protected,) = ctx.saved_tensors
        g, m = grad.float(), protected.float()
        dot = (g * m).sum(dim=1, keepdim=True)
        norm_sq = (m * m).sum(dim=1, keepdim=True)
        conflict = (dot < 0) & (norm_sq > 0)
        scale = torch.where(conflict, dot / norm_sq.clamp(min=1e-30), torch.zeros_like(dot))
        if ctx.on_backward is not None:
            ctx.on_backward(conflict.float().mean())
        return (g - scale * m).to(grad.dtype), None, None


def project_conflicting_gradient(
    x: Tensor, protected: Tensor, on_backward: Optional[Callable[[Tensor], None]] = None
) -> Tensor:
    """``x`` unchanged in the forward pass; in the backward pass each row of the gradient that
    reaches it loses its component along the same row of ``protected`` (the gradient of the
    loss to protect with respect to ``x``, [rows, dim]) where the two conflict (negative dot
    product). A step along the result then does not, to first order, raise the protected loss
    through that row. ``on_backward`` receives the fraction of rows in conflict (a tensor, so
    that the backward need not wait for the device)."""
    if x.dim() != 2 or protected.shape != x.shape:
        raise ValueError(
            f"expected x [rows, dim] and a protected gradient of its shape, got "
            f"{tuple(x.shape)} and {tuple(protected.shape)}"
        )
    return _ProjectConflict.apply(x, protected.detach(), on_backward)
