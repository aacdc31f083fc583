"""The dynamic mask head on whole feature maps, and the one place that picks its implementation.

Every query q runs its own small MLP (parameters ``params[q]``, AdelaiDet's layout, see
``dynamic_mlp``) on its image's mask features, optionally preceded by the relative coordinates
``(locations[q] - p) / soi[q]`` of every FCOS cell centre p. The output is the [Q, 1, H, W]
logits at the stride of the features; upsampling stays with the caller.

* ``reference``: AdelaiDet's math, [Q, 2 + C, HW] inputs and every activation kept;
* ``tiled``: queries grouped by image in chunks, activations recomputed in the backward;
* ``triton_kernels``: fused kernels for the 3-layer head on CUDA (``triton`` is optional).
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..dynamic_mlp import autocast_off
from ..triton_support import IMPLS, FirstUseCheck, compare_paths, resolve_impl
from .reference import reference_dense_mask_logits
from .tiled import tiled_dense_mask_logits
from .triton_kernels import triton_dense_mask_logits


def _check_triton_dense_head(
    mask_feats: Tensor,
    params: Tensor,
    stride: int,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool,
) -> FirstUseCheck:
    """The Triton path against the tiled one, forward and backward, on a small problem of the
    real channels, layers, dtypes and device."""

    def check() -> Optional[str]:
        g = torch.Generator().manual_seed(0)
        device, channels = mask_feats.device, mask_feats.shape[1]
        p = torch.randn(4, params.shape[1], generator=g) * 0.3
        f = torch.randn(2, channels, 5, 7, generator=g)
        locations = (torch.rand(4, 2, generator=g) * stride * 6).to(device)
        args = (torch.tensor([0, 1, 1, 0], device=device), locations)
        args += (torch.full((4,), 64.0, device=device), stride, layer_shapes, use_rel_coords)
        results = []
        with torch.enable_grad(), autocast_off(device):
            for path in (triton_dense_mask_logits, tiled_dense_mask_logits):
                pp = p.to(device, params.dtype).requires_grad_()
                ff = f.to(device, mask_feats.dtype).requires_grad_()
                out = path(ff, pp, *args)
                results.append([out, *torch.autograd.grad(out.float().sum(), [pp, ff])])
        return compare_paths("dense mask head", *results)

    return check


def dense_mask_logits(
    mask_feats: Tensor,
    params: Tensor,
    im_inds: Tensor,
    locations: Tensor,
    soi: Tensor,
    stride: int,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
    impl: str = "auto",
    chunk_elems: Optional[int] = None,
) -> Tensor:
    """Mask logits [Q, 1, H, W] of every query's dynamic MLP on its own image's features.

    Args:
        mask_feats: [B, C, H, W] mask-branch features at ``stride`` (get gradient).
        params: [Q, P] dynamic parameters in AdelaiDet's layout (get gradient).
        im_inds: [Q] int64 image of each query, in [0, B).
        locations: [Q, 2] (x, y) input pixel of each query; soi: [Q] size of interest of its
            FPN level. Neither gets gradient.
        stride: of ``mask_feats``; the relative coordinates of cell p are
            ``(locations[q] - fcos_cell_center(p)) / soi[q]``.
        layer_shapes: (out, in) per layer, the first taking ``2 + C`` inputs when
            ``use_rel_coords`` else ``C``.
        impl: "reference", "tiled", "triton" (CUDA tensors only) or "auto" (triton on CUDA
            when it imports and supports ``layer_shapes``, else tiled).
        chunk_elems: tiled path only: about how many floats one [queries, hidden, HW] chunk of
            activations holds.
    Returns:
        [Q, 1, H, W] logits; [0, 1, H, W] (still in the graph) without queries.
    """
    c_in = mask_feats.shape[1] + (2 if use_rel_coords else 0)
    check = _check_triton_dense_head(mask_feats, params, int(stride), layer_shapes, use_rel_coords)
    impl = resolve_impl(impl, mask_feats, layer_shapes, c_in, "dense mask head", check)
    args = (mask_feats, params, im_inds, locations, soi, int(stride), layer_shapes, use_rel_coords)
    if impl == "reference":
        return reference_dense_mask_logits(*args)
    if impl == "tiled":
        return tiled_dense_mask_logits(*args, chunk_elems=chunk_elems)
    return triton_dense_mask_logits(*args)


__all__ = [
    "IMPLS",
    "resolve_impl",
    "dense_mask_logits",
    "reference_dense_mask_logits",
    "tiled_dense_mask_logits",
]
