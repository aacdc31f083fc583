"""FCOS target assignment: which ground-truth box, if any, each feature location regresses."""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor

from ...layers.cell_centers import fcos_cell_centers


def compute_locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """(x, y) input-pixel coordinates of the cells of a [height, width] map with this stride,
    row-major, shape [height * width, 2], in FCOS's convention (see ``layers.cell_centers``)."""
    return fcos_cell_centers(height, width, stride, device)


@dataclass
class FCOSTargets:
    """Targets of a batch, flattened image-major over all levels ([N * L] with L locations per
    image)."""

    labels: Tensor  # class index, ``num_classes`` for background
    reg_targets: Tensor  # [N * L, 4] (l, t, r, b) distances divided by the level's stride
    gt_inds: Tensor  # index into the batch's concatenated gt instances, -1 for background


def assign_targets(
    locations: Tensor,
    level_of_location: Tensor,
    strides: Sequence[int],
    sizes_of_interest: Sequence[float],
    gt_instances: List[Instances],
    num_classes: int,
    center_sample: bool,
    pos_radius: float,
) -> FCOSTargets:
    """Assign every location of every image to at most one ground-truth box.

    A location is a candidate for a box if it lies inside it (or, with center sampling, inside
    the square of ``pos_radius`` strides around :func:`sampling_centers`, clipped to the box)
    and if the largest of its four distances to the box sides falls in the size range of the
    location's level. Among candidates the box of smallest area wins.

    Args:
        locations: [L, 2] (x, y) of all levels' cells, concatenated.
        level_of_location: [L] level index of each location.
        strides: stride of each level.
        sizes_of_interest: upper size bound of each level but the last.
        gt_instances: per image, with ``gt_boxes`` and ``gt_classes`` (and ``gt_bitmasks_full``
            when center sampling should use mask centroids).
    """
    device = locations.device
    stride_of_location = torch.as_tensor(strides, dtype=torch.float32, device=device)[
        level_of_location
    ]
    bounds = [0.0, *sizes_of_interest, float("inf")]
    lower = torch.as_tensor(bounds[:-1], device=device)[level_of_location]
    upper = torch.as_tensor(bounds[1:], device=device)[level_of_location]
    xs, ys = locations[:, 0, None], locations[:, 1, None]

    labels, reg_targets, gt_inds = [], [], []
    num_gts_before = 0
    for instances in gt_instances:
        boxes = instances.gt_boxes.tensor.to(device)
        num_gts = boxes.shape[0]
        if num_gts == 0:
            labels.append(torch.full_like(lower, num_classes, dtype=torch.long))
            reg_targets.append(torch.zeros(len(locations), 4, device=device))
            gt_inds.append(torch.full_like(lower, -1, dtype=torch.long))
            continue
        x0, y0, x1, y1 = boxes[None, :, 0], boxes[None, :, 1], boxes[None, :, 2], boxes[None, :, 3]
        reg = torch.stack([xs - x0, ys - y0, x1 - xs, y1 - ys], dim=2)  # [L, G, 4]
        if center_sample:
            radius = stride_of_location[:, None] * pos_radius
            cx, cy = sampling_centers(instances)
            cx, cy = cx.to(device)[None], cy.to(device)[None]
            cx0, cy0 = torch.max(cx - radius, x0), torch.max(cy - radius, y0)
            cx1, cy1 = torch.min(cx + radius, x1), torch.min(cy + radius, y1)
            center_dist = torch.stack([xs - cx0, ys - cy0, cx1 - xs, cy1 - ys], dim=2)
            inside = center_dist.min(dim=2).values > 0
        else:
            inside = reg.min(dim=2).values > 0
        max_reg = reg.max(dim=2).values
        in_level = (max_reg >= lower[:, None]) & (max_reg <= upper[:, None])
        areas = ((x1 - x0) * (y1 - y0)).expand(len(locations), num_gts).clone()
        areas[~(inside & in_level)] = float("inf")
        min_area, gt_ind = areas.min(dim=1)
        background = min_area == float("inf")

        per_labels = instances.gt_classes.to(device)[gt_ind]
        per_labels[background] = num_classes
        per_reg = (
            reg[torch.arange(len(locations), device=device), gt_ind] / stride_of_location[:, None]
        )
        per_gt_inds = gt_ind + num_gts_before
        per_gt_inds[background] = -1
        labels.append(per_labels)
        reg_targets.append(per_reg)
        gt_inds.append(per_gt_inds)
        num_gts_before += num_gts

    return FCOSTargets(torch.cat(labels), torch.cat(reg_targets), torch.cat(gt_inds))


def sampling_centers(instances: Instances) -> Tuple[Tensor, Tensor]:
    """The (x, y) that centre sampling draws its region around, each [G].

    With masks (``gt_bitmasks_full``, as CondInst adds them) it is the mask centroid, the first
    image moments in pixel-index coordinates, as in AdelaiDet's CondInst: for an L-shaped or
    triangular object it lies on the object where the box centre may not. Boxes only (plain
    FCOS) or an empty mask: the box centre. AdelaiDet gives an empty mask the centroid (0, 0)
    instead, which moves its positive region to the image corner; we do not copy that.
    """
    boxes = instances.gt_boxes.tensor
    box_cx, box_cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    if not instances.has("gt_bitmasks_full"):
        return box_cx, box_cy
    masks = instances.gt_bitmasks_full
    # Integer moments from row and column sums: exact, and no [G, H, W] float temporary.
    cols = masks.sum(dim=1, dtype=torch.int64)  # [G, W]
    rows = masks.sum(dim=2, dtype=torch.int64)  # [G, H]
    area = cols.sum(dim=1)
    xs = torch.arange(cols.shape[1], device=masks.device)
    ys = torch.arange(rows.shape[1], device=masks.device)
    safe_area = area.clamp(min=1).double()
    cx = ((cols * xs).sum(dim=1).double() / safe_area).float().to(boxes.device)
    cy = ((rows * ys).sum(dim=1).double() / safe_area).float().to(boxes.device)
    empty = (area == 0).to(boxes.device)
    return torch.where(empty, box_cx, cx), torch.where(empty, box_cy, cy)


def centerness_targets(reg_targets: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) for [P, 4] positive distances."""
    left_right = reg_targets[:, [0, 2]]
    top_bottom = reg_targets[:, [1, 3]]
    ratio = (left_right.min(dim=1).values / left_right.max(dim=1).values) * (
        top_bottom.min(dim=1).values / top_bottom.max(dim=1).values
    )
    return torch.sqrt(ratio)
