"""Pieces of the dense mask head that its implementations share."""

from typing import List, Tuple

import torch
from torch import Tensor

from ..cell_centers import fcos_cell_centers


def relative_coords(
    locations: Tensor, soi: Tensor, height: int, width: int, stride: int, dtype: torch.dtype
) -> Tensor:
    """[Q, 2, HW] ``(locations[q] - p) / soi[q]`` over the FCOS cell centres p, row-major."""
    pixels = fcos_cell_centers(height, width, stride, locations.device)
    rel = (locations[:, :, None] - pixels.t()[None]) / soi[:, None, None]
    return rel.to(dtype)


def image_segments(im_inds: Tensor, num_images: int) -> Tuple[Tensor, List[int]]:
    """Queries sorted by image (stable) and the [num_images + 1] bounds of each image's run."""
    order = torch.argsort(im_inds, stable=True)
    counts = torch.bincount(im_inds, minlength=num_images)
    if counts.numel() > num_images:
        raise ValueError(f"im_inds must lie in [0, {num_images}), got max {int(im_inds.max())}")
    bounds = [0] + torch.cumsum(counts, 0).tolist()
    return order, bounds


def feature_grad_segments(im_inds: Tensor, num_images: int) -> Tuple[Tensor, Tensor, int]:
    """The queries sorted by image, the image bounds on the device and the most queries of one
    image: what the features' gradient kernel needs (one host sync, for the last)."""
    order, bounds = image_segments(im_inds, num_images)
    most = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    return order, torch.tensor(bounds, dtype=torch.int64).to(im_inds.device), most
