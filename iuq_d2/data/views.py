"""The geometric views g(I) of the equivariance losses, as detectron2 Transforms.

A view is an aligned crop, an optional horizontal flip and a rescale. All three map continuous
pixel coordinates by an axis-aligned scale and translation, which :func:`transform_to_affine`
extracts so that the model can warp the original's feature map into the view.
"""

from typing import Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T

__all__ = ["sample_view_transforms", "transform_to_affine"]


def sample_view_transforms(
    image_size: Tuple[int, int],
    crop_size: Tuple[float, float],
    scales: Sequence[float],
    flip_prob: float,
    align: int = 8,
) -> T.TransformList:
    """Draw a view g of an image of ``image_size`` (h, w) from numpy's global RNG, as
    detectron2's augmentations do, so that detectron2's per-worker seeding makes it reproducible.

    g = crop, then a horizontal flip with probability ``flip_prob``, then a resize by a factor
    drawn uniformly from ``scales`` (none when the factor is 1). Without rescale, the feature
    cells of the view are cells of the original (cells are centred on pixels ``align * k``, see
    ``iuq_d2.layers.warp``): the crop's offset is a multiple of ``align``, so it shifts cells by
    whole cells, and its sides are ``align * m + 1`` pixels, so that a flip maps the centre pixel
    ``align * k`` of a cell onto the centre pixel ``align * (m - k)`` of another. Each side,
    relative to the largest such side, is drawn uniformly in ``crop_size``.
    """
    h, w = image_size
    cells_h, cells_w = (h - 1) // align, (w - 1) // align
    if cells_h == 0 or cells_w == 0:
        raise ValueError(
            f"Cannot crop a view aligned to {align} from an image of size {tuple(image_size)}"
        )
    rel_h, rel_w = np.random.uniform(crop_size[0], crop_size[1], size=2)
    crop_h = int(np.clip(round(rel_h * cells_h), 1, cells_h)) * align + 1
    crop_w = int(np.clip(round(rel_w * cells_w), 1, cells_w)) * align + 1
    y0 = np.random.randint((h - crop_h) // align + 1) * align
    x0 = np.random.randint((w - crop_w) // align + 1) * align
    transforms = [T.CropTransform(x0, y0, crop_w, crop_h, orig_w=w, orig_h=h)]
    if np.random.rand() < flip_prob:
        transforms.append(T.HFlipTransform(crop_w))
    factor = float(scales[np.random.randint(len(scales))])
    if factor != 1.0:
        new_h = max(int(round(crop_h * factor)), 1)
        new_w = max(int(round(crop_w * factor)), 1)
        transforms.append(T.ResizeTransform(crop_h, crop_w, new_h, new_w))
    return T.TransformList(transforms)


def _affine_of(transform: T.Transform, size: Tuple[int, int]) -> Tuple[float, float, float, float]:
    """(sx, tx, sy, ty) of a single transform, from its ``apply_coords`` on three corners of an
    image of ``size``, checked on a fourth point off their lines."""
    h, w = max(size[0], 1), max(size[1], 1)
    points = np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [0.37 * w, 0.71 * h]], dtype=np.float64)
    mapped = np.asarray(transform.apply_coords(points.copy()), dtype=np.float64)
    sx = (mapped[1, 0] - mapped[0, 0]) / w
    sy = (mapped[2, 1] - mapped[0, 1]) / h
    tx, ty = mapped[0, 0], mapped[0, 1]
    expected = np.stack([sx * points[:, 0] + tx, sy * points[:, 1] + ty], axis=1)
    tol = 1e-6 * max(h, w, np.abs(mapped).max())
    if not np.allclose(mapped, expected, rtol=0.0, atol=tol):
        raise ValueError(
            f"{type(transform).__name__} is not an axis-aligned scale and translation of pixel "
            f"coordinates ({transform}); equivariance views support crop, flip, resize and the like"
        )
    return float(sx), float(tx), float(sy), float(ty)


def transform_to_affine(
    transforms: T.Transform, image_size: Tuple[int, int]
) -> Tuple[float, float, float, float]:
    """(sx, tx, sy, ty) with x' = sx * x + tx, y' = sy * y + ty, the map of continuous pixel
    coordinates that ``transforms`` (a Transform or TransformList) applies to an image of
    ``image_size`` (h, w).

    Raises:
        ValueError: naming the type of the first transform that is not an axis-aligned scale
            and translation (e.g. a rotation).
    """
    parts = transforms.transforms if isinstance(transforms, T.TransformList) else [transforms]
    sx, tx, sy, ty = 1.0, 0.0, 1.0, 0.0
    for transform in parts:
        a, b, c, d = _affine_of(transform, image_size)
        sx, tx, sy, ty = a * sx, a * tx + b, c * sy, c * ty + d
    return sx, tx, sy, ty
