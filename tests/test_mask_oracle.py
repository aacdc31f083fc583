"""The mask-error oracles of ``tools.mask_oracle``, by hand."""

import pytest
import torch
from detectron2.structures import BoxMode

from tools.mask_oracle import _SpillTally, ground_truth_masks, oracle_masks, own_instances


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
    tally.add(_box(8, 16, 0, 0, 10, 8)[None], gt)  # 32 own; 48 on the neighbour, 24 within 3 px
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


class _FixedModel:
    """Stands in for CondInst: ``postprocess`` returns the detections as they are."""

    def postprocess(self, det, mask_probs, padded_size, out_h, out_w):
        return det


def test_oracle_aps_scores_each_oracle_apart(tmp_path):
    from types import SimpleNamespace

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.coco import convert_to_coco_json
    from detectron2.structures import Boxes, Instances

    from tools.mask_oracle import oracle_aps

    h, w = 32, 48
    squares = [(2, 2, 14, 14), (14, 2, 26, 14)]  # two touching 12x12 instances
    annotations = [
        {
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 0,
            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
        }
        for x0, y0, x1, y1 in squares
    ]
    record = {"file_name": "none.png", "image_id": 1, "height": h, "width": w}
    name = "mask_oracle_test_dataset"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: [{**record, "annotations": annotations}])
        json_file = str(tmp_path / "coco.json")
        MetadataCatalog.get(name).set(thing_classes=["square"], json_file=json_file)
        convert_to_coco_json(name, json_file)
    gt = ground_truth_masks({**record, "annotations": annotations})
    # One detection per square; each mask takes in the other square's left or right half.
    masks = torch.stack([_box(h, w, 2, 2, 20, 14), _box(h, w, 8, 2, 26, 14)])
    det = Instances(
        (h, w),
        pred_boxes=Boxes(torch.tensor([[2.0, 2, 14, 14], [14.0, 2, 26, 14]])),
        scores=torch.tensor([0.9, 0.8]),
        pred_classes=torch.tensor([0, 0]),
        pred_masks=masks,
    )
    image = SimpleNamespace(image_id=1, detections=det, padded_size=(h, w), output_size=(h, w))
    image.detections.pred_global_masks = masks[:, None].float()
    result = oracle_aps(_FixedModel(), name, [(image, gt)])
    ap = result["ap"]
    # Each mask has IoU 144 / 216 = 0.67 with its square: matched up to IoU 0.65 only.
    assert ap["model"]["AP50"] == pytest.approx(100.0) and ap["model"]["AP75"] == 0.0
    for oracle in ("no_neighbours", "no_spill", "gt_masks"):
        assert ap[oracle]["AP"] == pytest.approx(100.0)
    assert torch.equal(det.pred_masks, masks)  # the oracles worked on copies
    assert result["num_images"] == 1
    assert result["spill"].frac_on_neighbours == pytest.approx(72 / 216)
