"""FCOS target assignment and losses against hand computations."""

import math

import pytest
import torch
from detectron2.structures import Boxes, Instances
from fvcore.nn import sigmoid_focal_loss

from iuq_d2.layers import ltrb_iou_loss
from iuq_d2.modeling.fcos.targets import assign_targets, centerness_targets, compute_locations


def _gt(boxes, classes, size=(64, 64)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes)
    return inst


def test_compute_locations_are_cell_centres():
    loc = compute_locations(2, 3, 8, torch.device("cpu"))
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert loc.tolist() == expected


def _one_level(h, w, stride):
    loc = compute_locations(h, w, stride, torch.device("cpu"))
    return loc, torch.zeros(len(loc), dtype=torch.long)


def test_assignment_without_center_sampling_marks_locations_inside_box():
    loc, levels = _one_level(4, 4, 8)  # centres at 4, 12, 20, 28
    gt = _gt([[0, 0, 16, 16]], [2])
    t = assign_targets(
        loc, levels, [8], [], [gt], num_classes=3, center_sample=False, pos_radius=1.5
    )
    positive = (t.labels != 3).reshape(4, 4)
    assert positive.tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [False] * 4,
        [False] * 4,
    ]
    assert set(t.labels[t.labels != 3].tolist()) == {2}
    # location (4, 4): l=4, t=4, r=12, b=12, divided by the stride 8
    assert t.reg_targets[0].tolist() == [0.5, 0.5, 1.5, 1.5]
    assert t.gt_inds[0].item() == 0 and t.gt_inds[15].item() == -1


def test_center_sampling_restricts_to_radius_around_centre():
    loc, levels = _one_level(8, 8, 8)
    gt = _gt([[0, 0, 64, 64]], [0])
    t = assign_targets(
        loc, levels, [8], [], [gt], num_classes=1, center_sample=True, pos_radius=1.5
    )
    positive = (t.labels == 0).reshape(8, 8)
    # centre 32, radius 12: cells with centres 20 < x < 44 -> 28, 36
    rows = positive.nonzero()[:, 0].unique().tolist()
    cols = positive.nonzero()[:, 1].unique().tolist()
    assert rows == [3, 4] and cols == [3, 4]


def test_smallest_box_wins_and_gt_inds_are_batch_global():
    loc, levels = _one_level(4, 4, 8)
    big = [0, 0, 32, 32]
    small = [0, 0, 16, 16]
    t = assign_targets(
        loc,
        levels,
        [8],
        [],
        [_gt([[1, 1, 2, 2]], [0]), _gt([big, small], [1, 0])],
        num_classes=2,
        center_sample=False,
        pos_radius=1.5,
    )
    second = slice(16, 32)
    # (4, 4) lies in both boxes of the second image: the small one (its index 1, global 2) wins.
    assert t.labels[second][0].item() == 0 and t.gt_inds[second][0].item() == 2
    # (28, 28) is only in the big box (global index 1).
    assert t.labels[second][15].item() == 1 and t.gt_inds[second][15].item() == 1


def test_size_ranges_pick_the_level():
    l3, _ = _one_level(8, 8, 8)
    l4, _ = _one_level(4, 4, 16)
    loc = torch.cat([l3, l4])
    levels = torch.cat([torch.zeros(64, dtype=torch.long), torch.ones(16, dtype=torch.long)])
    # Every point inside a 60 px box is >= 30 px from some side: beyond P3's bound of 20.
    gt = _gt([[2, 2, 62, 62]], [0])
    t = assign_targets(
        loc, levels, [8, 16], [20], [gt], num_classes=1, center_sample=False, pos_radius=1.5
    )
    pos_levels = levels[t.labels == 0]
    assert len(pos_levels) > 0 and (pos_levels == 1).all()


def test_empty_image_is_all_background():
    loc, levels = _one_level(2, 2, 8)
    t = assign_targets(
        loc, levels, [8], [], [_gt([], [])], num_classes=5, center_sample=True, pos_radius=1.5
    )
    assert (t.labels == 5).all() and (t.gt_inds == -1).all()


def test_centerness_target():
    reg = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert centerness_targets(reg).item() == pytest.approx(math.sqrt((1 / 3) * (2 / 4)))


def test_iou_and_giou_losses_by_hand():
    pred = torch.tensor([[2.0, 2.0, 2.0, 2.0]])  # box [-2, -2, 2, 2], area 16
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0]])  # box [-1, -1, 3, 3], area 16
    inter = 3 * 3
    union = 16 + 16 - inter
    iou = (inter + 1) / (union + 1)
    assert ltrb_iou_loss(pred, target, "iou").item() == pytest.approx(-math.log(iou))
    enclose = 5 * 5
    giou = iou - (enclose - union) / enclose
    assert ltrb_iou_loss(pred, target, "giou").item() == pytest.approx(1 - giou, rel=1e-5)


def test_focal_loss_by_hand():
    logits = torch.tensor([[0.3, -1.2]])
    targets = torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(logits)[0]
    alpha, gamma = 0.25, 2.0
    pos = -alpha * (1 - p[0]) ** gamma * math.log(p[0])
    neg = -(1 - alpha) * p[1] ** gamma * math.log(1 - p[1])
    got = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum")
    assert got.item() == pytest.approx((pos + neg).item(), rel=1e-5)
