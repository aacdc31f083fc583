"""Warping a feature map of the original images into their views: g(F(I)) for the equivariance
losses of IUQ.

Cells are placed by the network's convention of ``layers.cell_centers`` (cell k of a stride-s
map is centred on the continuous point s*k + 0.5), not FCOS's s*k + s//2. A view g is an
axis-aligned affine map of continuous coordinates, so the warp is separable: each view row reads
source rows, each view column reads source columns, independently.
"""

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .cell_centers import PIXEL_CENTER, network_cell_center

__all__ = ["warp_to_view"]

# How far (in cells) a source position may be from an integer for the warp to index exactly.
_EXACT_TOL = 1e-6

Sizes = Union[Tensor, Sequence[Tuple[int, int]]]


def _as_size_list(sizes: Sizes, batch: int, name: str) -> List[Tuple[int, int]]:
    sizes = sizes.tolist() if isinstance(sizes, Tensor) else list(sizes)
    if len(sizes) != batch:
        raise ValueError(f"warp_to_view: {name} has {len(sizes)} sizes for {batch} feature maps")
    return [(int(h), int(w)) for h, w in sizes]


def _num_cells_inside(size: int, stride: int, cells: int) -> int:
    """Number of leading cells whose centre pixel (stride * k) lies inside a side of ``size``."""
    return min(max(math.ceil(size / stride), 0), cells)


def _axis_sampling(
    scale: float,
    shift: float,
    stride: int,
    num_dst: int,
    dst_size: int,
    num_src: int,
    src_size: int,
    device: torch.device,
) -> Tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """Along one axis: for each of ``num_dst`` view cells the source cells to read (i0, i1), the
    weight of i1 (None when the mapping is exact indexing), and whether the view cell is valid."""
    half = PIXEL_CENTER
    # View cell k sits at p = stride*k + half (network_cell_center); its source point is
    # (p - shift) / scale, i.e. the fractional source cell slope * k + offset.
    slope = 1.0 / scale
    offset = ((half - shift) / scale - half) / stride
    exact = abs(abs(slope) - 1.0) < _EXACT_TOL and abs(offset - round(offset)) < _EXACT_TOL
    k = torch.arange(num_dst, dtype=torch.float64, device=device)
    src = slope * k + offset
    if exact:
        src = src.round()
    # Interpolation reads only cells whose centres lie inside the source image, so the view
    # cell must map between the first and last of them; its centre must lie inside the view.
    inside = _num_cells_inside(src_size, stride, num_src)
    valid = (src >= 0) & (src <= inside - 1) & (network_cell_center(k, stride) < dst_size)
    lower = src.floor().clamp(0, max(num_src - 1, 0))
    weight = (src - lower).clamp(0.0, 1.0)
    i0 = lower.long()
    i1 = (i0 + 1).clamp(max=max(num_src - 1, 0))
    return i0, i1, (None if exact else weight), valid


def _sample_axis(x: Tensor, dim: int, i0: Tensor, i1: Tensor, weight: Optional[Tensor]) -> Tensor:
    """Read cells ``i0`` along ``dim`` of ``x``, linearly blended with cells ``i1`` by ``weight``
    unless the sampling is exact."""
    a = x.index_select(dim, i0)
    if weight is None:
        return a
    shape = [1] * x.dim()
    shape[dim] = -1
    w = weight.to(x.dtype).view(shape)
    return a + (x.index_select(dim, i1) - a) * w


def warp_to_view(
    feats: Tensor,
    affines: Tensor,
    src_sizes: Sizes,
    dst_feat_size: Tuple[int, int],
    dst_sizes: Sizes,
    stride: int,
) -> Tuple[Tensor, Tensor]:
    """Warp the feature maps of B original images into the feature grids of their views.

    Args:
        feats: [B, C, H, W] F(I) of the originals, stride ``stride``, of a padded batch.
        affines: [B, 4] (sx, tx, sy, ty) per image; a pixel (x, y) of I is at
            (sx * x + tx, sy * y + ty) in its view (see ``transform_to_affine``).
        src_sizes: unpadded (h, w) of each original, a list or a [B, 2] tensor.
        dst_feat_size: (Hv, Wv), the feature size of the padded view batch.
        dst_sizes: unpadded (h, w) of each view, a list or a [B, 2] tensor.
        stride: stride of ``feats`` and of the view features, in pixels.
    Returns:
        warped: [B, C, Hv, Wv], g(F(I)) on the view grid, zero where not valid.
        valid: [B, Hv, Wv] bool. A view cell is valid when its centre lies inside the view
            image and its source point lies, along each axis, between the centres of the first
            and last source cells whose centres lie inside the original image (no padding
            cell and no extrapolation are ever read).

    Along an axis whose mapping is an integer cell shift with scale +1, or a flip with scale
    -1 that lands on cell centres (an aligned crop and flip without rescale), the warp copies
    cells bit-exactly; along other axes it interpolates linearly between the two nearest
    source cells. Gradients flow into ``feats``.
    """
    if feats.dim() != 4 or affines.shape != (feats.shape[0], 4):
        raise ValueError(
            f"warp_to_view expects feats [B, C, H, W] and affines [B, 4], got "
            f"{tuple(feats.shape)} and {tuple(affines.shape)}"
        )
    batch, _, src_h, src_w = feats.shape
    dst_h, dst_w = dst_feat_size
    src_sizes = _as_size_list(src_sizes, batch, "src_sizes")
    dst_sizes = _as_size_list(dst_sizes, batch, "dst_sizes")
    if batch == 0:
        return (
            feats.new_zeros((0, feats.shape[1], dst_h, dst_w)),
            torch.zeros((0, dst_h, dst_w), dtype=torch.bool, device=feats.device),
        )
    warped, valid = [], []
    for f, (sx, tx, sy, ty), (h, w), (hv, wv) in zip(
        feats, affines.detach().double().tolist(), src_sizes, dst_sizes
    ):
        r0, r1, rw, rvalid = _axis_sampling(sy, ty, stride, dst_h, hv, src_h, h, feats.device)
        c0, c1, cw, cvalid = _axis_sampling(sx, tx, stride, dst_w, wv, src_w, w, feats.device)
        f = _sample_axis(_sample_axis(f, 1, r0, r1, rw), 2, c0, c1, cw)
        mask = rvalid[:, None] & cvalid[None, :]
        warped.append(torch.where(mask, f, f.new_zeros(())))
        valid.append(mask)
    return torch.stack(warped), torch.stack(valid)
