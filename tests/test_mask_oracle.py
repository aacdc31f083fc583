"""The mask-error oracles of ``iuq_d2.evaluation.mask_oracle``, by hand."""

import pytest
import torch
from detectron2.structures import BoxMode

from iuq_d2.evaluation import ground_truth_masks, oracle_masks, own_instances
from iuq_d2.evaluation.mask_oracle import _SpillTally


def _box(h, w, x0, y0, x1, y1):
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture
def scene():
    """Two touching ground-truth squares; detection 0 covers the left one and spills onto the
    right one and onto background, detection 1 lies on background only."""
    gt = torch.stack([_box(8, 12, 0, 0, 4, 4), _box(8, 12, 4, 0, 8, 4)])
    det0 = _box(8, 12, 0, 0, 5, 5)  # 16 own, 4 on the neighbour, 5 on background
    det1 = _box(8, 12, 9, 5, 12, 8)
    return torch.stack([det0, det1]), gt


def test_own_instance_is_the_best_iou_and_none_without_overlap(scene):
    masks, gt = scene
    assert own_instances(masks, gt).tolist() == [0, -1]
    assert own_instances(masks, gt[:0]).tolist() == [-1, -1]


def test_each_oracle_clears_what_it_names_and_leaves_unmatched_detections(scene):
    masks, gt = scene
    no_neighbours = oracle_masks(masks, gt, "no_neighbours")
    assert no_neighbours[0].sum() == 16 + 5 and not (no_neighbours[0] & gt[1]).any()
    no_spill = oracle_masks(masks, gt, "no_spill")
    assert torch.equal(no_spill[0], gt[0])
    assert torch.equal(oracle_masks(masks, gt, "gt_masks")[0], gt[0])
    assert torch.equal(oracle_masks(masks, gt, "model"), masks)
    for oracle in ("no_neighbours", "no_spill", "gt_masks"):
        assert torch.equal(oracle_masks(masks, gt, oracle)[1], masks[1])
    with pytest.raises(ValueError, match="unknown mask oracle 'perfect'"):
        oracle_masks(masks, gt, "perfect")


def test_spill_shares_by_hand(scene):
    masks, gt = scene
    tally = _SpillTally()
    tally.add(masks, gt)
    stats = tally.stats()
    assert stats.num_detections == 1  # detection 1 has no own instance
    assert stats.frac_on_own == pytest.approx(16 / 25)
    assert stats.frac_on_neighbours == pytest.approx(4 / 25)
    assert stats.frac_on_background == pytest.approx(5 / 25)
    assert stats.frac_on_neighbours_far == 0.0  # the spill is 1 pixel deep


def test_spill_far_from_the_own_instance_is_counted_apart():
    gt = torch.stack([_box(8, 16, 0, 0, 4, 8), _box(8, 16, 4, 0, 16, 8)])
    tally = _SpillTally()
    tally.add(_box(8, 16, 0, 0, 10, 8)[None], gt)  # 32 own; 48 on the neighbour, 16 within 3
    stats = tally.stats()
    assert stats.frac_on_neighbours == pytest.approx(48 / 80)
    assert stats.frac_on_neighbours_far == pytest.approx(24 / 80)


def test_ground_truth_masks_at_the_image_size_without_crowds():
    square = [[2.0, 1.0, 6.0, 1.0, 6.0, 5.0, 2.0, 5.0]]
    annotation = {"bbox": [2, 1, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    d = {
        "height": 8,
        "width": 10,
        "annotations": [
            {**annotation, "segmentation": square},
            {**annotation, "segmentation": square, "iscrowd": 1},
        ],
    }
    masks = ground_truth_masks(d)
    assert masks.shape == (1, 8, 10) and masks.dtype == torch.bool
    assert masks[0, 2:4, 3:5].all() and not masks[0, 6:, :].any()
    assert ground_truth_masks({"height": 8, "width": 10, "annotations": []}).shape == (0, 8, 10)
