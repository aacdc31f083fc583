"""Where CondInst's training follows AdelaiDet's on asymmetric inputs, each case by hand."""

import torch
from detectron2.structures import Boxes, Instances

from iuq_d2.modeling.condinst.condinst import topk_per_instance
from iuq_d2.modeling.condinst.mask_branch import MaskBranch
from iuq_d2.modeling.fcos.fcos import keep_top_scoring
from iuq_d2.modeling.fcos.targets import assign_targets, compute_locations, sampling_centers


def _right_triangle(n: int = 48, size: int = 64) -> Instances:
    """The pixels (x, y) with x + y < n on a size x size canvas; box (0, 0, n, n)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(torch.tensor([[0.0, 0.0, n, n]]))
    inst.gt_classes = torch.tensor([0])
    inst.gt_bitmasks_full = (xs + ys < n).to(torch.uint8)[None]
    return inst


def _positive_cells(inst: Instances):
    loc = compute_locations(8, 8, 8, torch.device("cpu"))  # centres 4, 12, ..., 60
    levels = torch.zeros(len(loc), dtype=torch.long)
    t = assign_targets(
        loc, levels, [8], [], [inst], num_classes=1, center_sample=True, pos_radius=1.5
    )
    return sorted(tuple(int(v) for v in loc[i]) for i in torch.nonzero(t.labels == 0).squeeze(1))


def test_center_sampling_is_centred_on_the_mask_centroid():
    inst = _right_triangle()
    # sum of x over the triangle is n(n-1)(n+1)/6 over n(n+1)/2 pixels: centroid (n-1)/3 = 47/3.
    cx, cy = sampling_centers(inst)
    assert torch.allclose(cx, torch.tensor([47 / 3])) and torch.allclose(cy, torch.tensor([47 / 3]))
    # Region 47/3 -/+ 12 = (3.67, 27.67): cell centres 4, 12, 20 in x and y, 9 positives.
    assert _positive_cells(inst) == [(x, y) for x in (4, 12, 20) for y in (4, 12, 20)]


def test_plain_fcos_without_masks_keeps_the_box_centre():
    inst = _right_triangle()
    inst.remove("gt_bitmasks_full")
    # Box centre 24: region (12, 36) holds the cell centres 20 and 28; (28, 28) is off the mask.
    assert _positive_cells(inst) == [(20, 20), (20, 28), (28, 20), (28, 28)]


def test_empty_mask_falls_back_to_the_box_centre():
    inst = _right_triangle()
    inst.gt_bitmasks_full.zero_()
    cx, cy = sampling_centers(inst)
    assert cx.tolist() == [24.0] and cy.tolist() == [24.0]


def test_semantic_target_ranks_overlaps_by_full_resolution_area():
    # 32 x 32 canvas, stride 8: the branch samples pixels 4, 12, 20, 28.
    a = torch.zeros(32, 32, dtype=torch.uint8)
    a[:, 4] = 1  # a one-pixel column on the sample line: area 32, 4 sampled cells
    b = torch.zeros(32, 32, dtype=torch.uint8)
    b[0:5, 0:8] = 1  # area 40, one sampled cell, (4, 4), shared with a
    inst = Instances((32, 32))
    inst.gt_classes = torch.tensor([0, 1])
    inst.gt_bitmasks_full = torch.stack([a, b])
    branch = MaskBranch.__new__(MaskBranch)
    branch.out_stride, branch.num_classes = 8, 2
    target = MaskBranch.semantic_targets(branch, inst, (4, 4))
    expected = torch.full((4, 4), 2)
    expected[:, 0] = 0  # a is smaller (32 < 40) and names (4, 4); by sampled cells b would (1 < 4)
    assert target.tolist() == expected.tolist()


def _positives(gt_inds, scores):
    pos = Instances((0, 0))
    pos.gt_inds = torch.tensor(gt_inds)
    pos.im_inds = torch.zeros(len(gt_inds), dtype=torch.long)
    pos.logits_pred = torch.logit(torch.tensor(scores))[:, None]
    pos.ctrness_pred = torch.full((len(gt_inds),), 20.0)  # sigmoid ~ 1: scores rank as given
    return pos


def test_topk_is_shared_among_instances_with_a_positive():
    # Instances 0 and 1 have 5 and 4 positives; instance 2 (too small) has none. k = 6.
    pos = _positives([0, 0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4])
    kept = topk_per_instance(pos, num_images=1, k=6)
    # 6 // 2 instances with positives = 3 each (6 // 3 GT instances would give 2 each).
    assert kept.gt_inds.tolist() == [0, 0, 0, 1, 1, 1]
    chosen = torch.sigmoid(kept.logits_pred[:, 0])
    assert torch.allclose(chosen[:3].sort().values, torch.tensor([0.5, 0.7, 0.9]))
    assert torch.allclose(chosen[3:].sort().values, torch.tensor([0.4, 0.6, 0.8]))


def test_post_nms_topk_keeps_ties_at_the_cut():
    det = Instances((10, 10))
    det.scores = torch.tensor([0.9, 0.8, 0.7, 0.7, 0.5])
    assert keep_top_scoring(det, 3).scores.tolist() == det.scores[:4].tolist()
    assert keep_top_scoring(det, 2).scores.tolist() == det.scores[:2].tolist()
    assert len(keep_top_scoring(det, 0)) == 5 and len(keep_top_scoring(det, 9)) == 5
