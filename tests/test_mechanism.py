"""Mechanism measurements (``tools.mechanism``): hand-made heads and masks with known answers,
and one pass of a tiny model through them."""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from iuq_d2.modeling.condinst.dynamic_mask_head import DynamicMaskHead
from tools.mechanism import (
    EncodedImage,
    _FiringTally,
    _moved_footprints,
    encode_image,
    false_firing,
    feature_identity,
    mask_sharpness,
)

from .conftest import make_input, tiny_config


def _detections(size, boxes, scores, params, locations):
    det = Instances(size)
    det.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    det.scores = torch.tensor(scores, dtype=torch.float32)
    det.mask_head_params = torch.tensor(params, dtype=torch.float32).reshape(len(scores), 4)
    det.locations = torch.tensor(locations, dtype=torch.float32).reshape(-1, 2)
    det.fpn_levels = torch.zeros(len(scores), dtype=torch.int64)
    return det


def _image(image_id, size, feat_value, gt_box, gt_cells, detections):
    """An encoded image of ``size`` (a multiple of 8) with constant one-channel F and one
    ground-truth instance covering ``gt_cells`` (rows, cols slices) of the stride-4 grid."""
    gt = Instances(size)
    gt.gt_boxes = Boxes(torch.tensor([gt_box], dtype=torch.float32))
    gt.gt_bitmasks = torch.zeros(1, size[0] // 4, size[1] // 4)
    gt.gt_bitmasks[(0, *gt_cells)] = 1.0
    feats = torch.full((1, 1, size[0] // 8, size[1] // 8), float(feat_value))
    return EncodedImage(image_id, feats, detections, gt, size, size)


def _head():
    """One linear layer on [rel_x, rel_y, F] with sizes of interest 1: the logit is exactly
    the parameters' weighted sum, relative coordinates in pixels."""
    return DynamicMaskHead(
        in_channels=1,
        channels=8,
        num_layers=1,
        disable_rel_coords=False,
        sizes_of_interest=[1] * 5,
        mask_out_stride=4,
    )


def _two_images(params_a, feat_b):
    """A (32 x 32, one instance at (0, 0, 20, 20) and its detection at (9, 10), one pixel left of
    its centre, plus a low-score one) and B (64 x 64, one instance on stride-4 cells 4..11,
    box (16, 16, 48, 48), centre (32, 32); no detections)."""
    det_a = _detections(
        (32, 32),
        [[0, 0, 20, 20], [0, 0, 20, 20]],
        [0.9, 0.1],
        [params_a, [0.0, 0.0, 0.0, 100.0]],
        [[9, 10], [9, 10]],
    )
    image_a = _image(1, (32, 32), 0.0, [0, 0, 20, 20], (slice(0, 5), slice(0, 5)), det_a)
    det_b = _detections((64, 64), [], [], [], [])
    image_b = _image(2, (64, 64), feat_b, [16, 16, 48, 48], (slice(4, 12), slice(4, 12)), det_b)
    return [image_a, image_b]


def test_false_firing_follows_the_placement():
    # logit = p_x - q_x: fires right of the query. At (9, 10) the query is left of all of B's
    # instance; moved to B's centre + (-1, 0) = (31, 32), it fires on the right 4 of 8 columns.
    stats = false_firing(_head(), 8, _two_images([-1.0, 0.0, 0.0, 0.0], 0.0), num_others=1)
    own, rel = stats["own_position"], stats["relative"]
    assert own.num_pairs == rel.num_pairs == 1  # the 0.1-score detection is not a query
    assert own.num_pixels == rel.num_pixels == 64
    assert own.pair_frac_firing == own.pixel_frac_firing == 1.0
    assert rel.pair_frac_firing == rel.pixel_frac_firing == 0.5


def test_false_firing_on_and_off_the_own_instance():
    # B laid over A: of B's 8 x 8 instance cells only (4, 4), at pixel (16, 16), lies on A's
    # instance (cells 0..4). logit = (9 - p_x) + (10 - p_y) + 15 is 2 there and < 0 on every
    # other cell of B's instance, so the head fires on exactly the footprint pixel.
    stats = false_firing(_head(), 8, _two_images([1.0, 1.0, 0.0, 15.0], 0.0), num_others=1)
    on, off = stats["on_own_instance"], stats["off_own_instance"]
    assert (on.num_pixels, off.num_pixels) == (1, 63)
    assert on.pixel_frac_firing == 1.0 and off.pixel_frac_firing == 0.0
    assert stats["own_position"].pixel_frac_firing == pytest.approx(1 / 64)


def test_false_firing_on_a_look_alike_split_by_the_moved_own_instance():
    # Moved onto B's instance (centre (32, 32)), the query's own instance (A's cells 0..4,
    # centre (10, 10)) is shifted by 22 px = 5.5 cells, rounded (half to even) to 6: it covers
    # B's cells 6..10, a 5 x 5 block of B's 8 x 8 instance (25 pixels on it, 39 sticking out).
    # A head reading F = 2 fires on all of them.
    stats = false_firing(_head(), 8, _two_images([0.0, 0.0, 1.0, 0.0], 2.0), num_others=1)
    on, off = stats["relative_on_own_instance"], stats["relative_off_own_instance"]
    assert (on.num_pixels, off.num_pixels) == (25, 39)
    assert on.pixel_frac_firing == off.pixel_frac_firing == 1.0
    # logit = q_x - p_x fires left of the moved query (x 31): B's columns 4..7 (x 18..30), of
    # which 6 and 7 lie on the moved own instance: 10 of its 25 pixels, 22 of the other 39.
    stats = false_firing(_head(), 8, _two_images([1.0, 0.0, 0.0, 0.0], 0.0), num_others=1)
    on, off = stats["relative_on_own_instance"], stats["relative_off_own_instance"]
    assert on.pixel_frac_firing == pytest.approx(10 / 25)
    assert off.pixel_frac_firing == pytest.approx(22 / 39)


def test_moved_footprints_shift_x_and_y_apart():
    own = torch.zeros(1, 6, 8)
    own[0, 1:3, 2:6] = 1.0  # rows 1..2, columns 2..5
    moved = _moved_footprints(own, torch.tensor([[[3, 1], [-3, 0]]]), (6, 8))
    expected = torch.zeros(2, 6, 8)
    expected[0, 2:4, 5:8] = 1.0  # 3 right, 1 down; column 8 falls off the canvas
    expected[1, 1:3, 0:3] = 1.0  # 3 left: column -1 falls off
    torch.testing.assert_close(moved[0], expected)


@pytest.mark.parametrize("feat", [2.0, -2.0])
def test_false_firing_of_a_head_reading_f(feat):
    stats = false_firing(_head(), 8, _two_images([0.0, 0.0, 1.0, 0.0], feat), num_others=1)
    for s in stats.values():
        assert s.pair_frac_firing == s.pixel_frac_firing == (1.0 if feat > 0 else 0.0)
        assert s.pair_mean_prob == pytest.approx(1 / (1 + math.exp(-feat)))
        assert s.pixel_mean_prob == pytest.approx(1 / (1 + math.exp(-feat)))
        assert s.grad_share_firing == (1.0 if feat > 0 else 0.0)


def test_grad_share_firing_is_the_focal_gradient_of_the_firing_pixels():
    # Two queries on one instance of 4 pixels; the second query has no pixel of the other.
    logits = torch.tensor([[3.0, 0.5, -1.0, -4.0], [2.0, -2.0, 0.2, 1.0]]).reshape(2, 1, 2, 2)
    masks = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    tally = _FiringTally()
    tally.add(logits, masks)
    x = logits.clone().requires_grad_(True)
    p = x.sigmoid()
    (0.75 * p.pow(2) * -torch.log1p(-p) * masks).sum().backward()
    grad = x.grad.flatten()
    firing = (logits.flatten() > 0) & (masks.flatten() > 0)
    expected = grad[firing].sum() / grad.sum()
    assert tally.stats().grad_share_firing == pytest.approx(expected.item(), rel=1e-5)
    # Most of it comes from the confident pixels: 3.0, 0.5, 2.0 against -1, -4, -2.
    assert 0.9 < expected.item() < 1.0


def test_mask_sharpness_inside_and_outside_the_matched_box():
    # Box (8, 8, 24, 24) covers stride-4 cells 2..5; the mask is its left half.
    det = _detections(
        (32, 32),
        [[8, 8, 24, 24], [0, 28, 4, 32]],
        [0.9, 0.8],
        [[0.0] * 4, [0.0] * 4],
        [[16, 16], [2, 30]],
    )
    det.pred_global_masks = torch.full((2, 1, 8, 8), 0.2)
    det.pred_global_masks[:, 0, 2:6, 2:4] = 0.9
    image = _image(1, (32, 32), 0.0, [8, 8, 24, 24], (slice(2, 6), slice(2, 4)), det)
    stats = mask_sharpness([image], mask_out_stride=4)
    assert (stats.num_confident, stats.num_matched) == (2, 1)
    assert stats.mean_prob_inside == pytest.approx(0.9)
    assert stats.mean_prob_outside == pytest.approx(0.2)


def test_mask_sharpness_splits_the_mask_into_border_and_interior():
    # 12 x 12 stride-4 grid; the box covers cells 1..10, the mask cells 2..7 (6 x 6): its
    # interior is cells 3..6 (16), its border the 20 others, the ring around it 28 cells.
    det = _detections((48, 48), [[4, 4, 44, 44]], [0.9], [[0.0] * 4], [[24, 24]])
    probs = torch.full((12, 12), 0.1)
    probs[1:9, 1:9] = 0.4
    probs[2:8, 2:8] = 0.7
    probs[3:7, 3:7] = 0.95
    det.pred_global_masks = probs[None, None]
    image = _image(1, (48, 48), 0.0, [4, 4, 44, 44], (slice(2, 8), slice(2, 8)), det)
    stats = mask_sharpness([image], mask_out_stride=4)
    assert stats.num_matched == 1
    assert stats.mean_prob_interior == pytest.approx(0.95)
    assert stats.mean_prob_border == pytest.approx(0.7)
    assert stats.mean_prob_ring == pytest.approx(0.4)
    assert stats.mean_prob_inside == pytest.approx((16 * 0.95 + 20 * 0.7) / 36)
    assert stats.mean_prob_outside == pytest.approx((28 * 0.4 + 36 * 0.1) / 64)


def _identity_image(image_id, masks, feats):
    """A 32 x 32 encoded image with ground-truth ``masks`` on the stride-4 grid [G, 8, 8] and
    mask features ``feats`` [C, 4, 4]."""
    gt = Instances((32, 32))
    gt.gt_bitmasks = masks
    gt.gt_bitmasks_full = masks.repeat_interleave(4, 1).repeat_interleave(4, 2).to(torch.uint8)
    return EncodedImage(image_id, feats[None], Instances((32, 32)), gt, (32, 32), (32, 32))


def test_feature_identity_by_hand():
    # Image A: a left and a right instance (8 stride-8 cells each), F (1, 0) and (-1, 0).
    masks_a = torch.zeros(2, 8, 8)
    masks_a[0, :, :4] = 1.0
    masks_a[1, :, 4:] = 1.0
    feats_a = torch.zeros(2, 4, 4)
    feats_a[0, :, :2], feats_a[0, :, 2:] = 1.0, -1.0
    # Image B: one instance on two cells, u = (1, 0.05) (a look-alike of A's left instance)
    # and v = (0, 1): u's nearest cell is in A, v's is u.
    masks_b = torch.zeros(1, 8, 8)
    masks_b[0, 1, :4] = 1.0
    feats_b = torch.zeros(2, 4, 4)
    feats_b[:, 0, 0] = torch.tensor([1.0, 0.05])
    feats_b[:, 0, 1] = torch.tensor([0.0, 1.0])
    images = [_identity_image(1, masks_a, feats_a), _identity_image(2, masks_b, feats_b)]
    stats = feature_identity(images, feat_stride=8)
    cos_uv = 0.05 / math.hypot(1.0, 0.05)
    assert stats.num_cells == 18
    assert stats.nn_same_instance_overall == pytest.approx(17 / 18)
    # Only image A has two instances; each of its cells finds its own instance there.
    assert stats.nn_same_instance_in_image == 1.0
    assert stats.cos_same_instance == pytest.approx((112 + 2 * cos_uv) / 114)
    assert stats.cos_other_instance_same_image == pytest.approx(-1.0)
    assert stats.cos_other_image == pytest.approx(0.0, abs=1e-6)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    # Every location scores above 0, so that an untrained model has detections.
    model = build_model(tiny_config(**{"MODEL.FCOS.INFERENCE_TH_TEST": 0.0}))
    return model.eval()


def test_tiny_model_end_to_end(tiny_model):
    # Wider than 128 pixels: at 128 the stride-128 level is one cell, on which GroupNorm fails.
    inputs = [
        make_input(96, 136, [[8, 8, 40, 32], [44, 20, 76, 60]], [0, 1], seed=1),
        make_input(100, 144, [[10, 30, 50, 70]], [2], seed=2),
        make_input(132, 96, [[4, 4, 28, 28]], [1], seed=3),
    ]
    encoded = [encode_image(tiny_model, x) for x in inputs]
    for image in encoded:
        assert image.gt.gt_bitmasks.shape[-2:] == image.detections.pred_global_masks.shape[-2:]
    stats = false_firing(
        tiny_model.mask_head,
        tiny_model.mask_branch.out_stride,
        encoded,
        score_thresh=0.0,
        max_per_image=4,
        num_others=2,
    )
    for name in ("own_position", "relative"):
        s = stats[name]
        assert s.num_pairs == 3 * 2 * 4
        for value in (s.pair_frac_firing, s.pair_mean_prob, s.pixel_frac_firing, s.pixel_mean_prob):
            assert 0.0 <= value <= 1.0
    # The matched detections' pixels, split in two.
    on, off = stats["on_own_instance"], stats["off_own_instance"]
    assert on.num_pixels + off.num_pixels <= stats["own_position"].num_pixels
    sharp = mask_sharpness(encoded, tiny_model.mask_head.mask_out_stride, score_thresh=0.0)
    assert sharp.num_confident == 3 * 10
