"""BoxInst: each loss term against values computed by hand on small images (a box, a uniform
colour, an edge inside the box), the LAB colour similarity against scikit-image, and the model's
training and inference passes with MODEL.BOXINST.ENABLED."""

import math
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from iuq_d2.modeling.condinst.boxinst import (
    BoxInstCriterion,
    box_masks,
    color_similarity,
    neighbours,
    pairwise_loss,
    pairwise_terms,
    projection_loss,
    rgb_to_lab,
)

from .conftest import REPO, make_input, tiny_config

EPS = 1e-5  # the dice loss's


def criterion(**overrides):
    args = dict(
        bottom_pixels_removed=10,
        pairwise_size=3,
        pairwise_dilation=2,
        warmup_iters=10000,
        color_thresh=0.3,
        input_format="BGR",
    )
    args.update(overrides)
    return BoxInstCriterion(**args)


def grid(rows):
    """[1, 1, H, W] float tensor of a list of rows."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


# A box: the masks AdelaiDet fills, the projection loss.


def test_box_masks_fill_from_int_corner_to_int_corner_inclusive():
    # AdelaiDet fills rows int(y0) .. int(y1) and columns int(x0) .. int(x1), both inclusive.
    masks = box_masks(torch.tensor([[5.3, 2.7, 12.9, 9.1], [0.0, 0.0, 0.0, 0.0]]), 16, 16)
    expected = torch.zeros(2, 16, 16, dtype=torch.uint8)
    expected[0, 2:10, 5:13] = 1
    expected[1, 0, 0] = 1
    assert torch.equal(masks, expected)
    # Sampled at the centres of the stride-4 cells (rows/columns 2, 6, 10, 14).
    cells = masks[0, 2::4, 2::4]
    assert cells.nonzero().tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]


def test_projection_loss_by_hand():
    box = grid([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    # Uniform 0.5: each projection is [.5 .5 .5 .5] against [0 1 1 0]:
    # dice = 1 - 2 * (0.5 + 0.5) / (4 * 0.25 + 2).
    half = torch.full_like(box, 0.5)
    expected = 2 * (1 - 2 * 1.0 / (3.0 + EPS))
    assert projection_loss(half, box).item() == pytest.approx(expected, rel=1e-6)
    # The box itself, and a diagonal inside it, project exactly like the box.
    diagonal = grid([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    for mask in (box, diagonal):
        assert projection_loss(mask, box).item() == pytest.approx(2 * (1 - 4 / (4 + EPS)), abs=1e-7)
    # A mean over masks: two copies give the same value.
    two = projection_loss(torch.cat([half, half]), torch.cat([box, box]))
    assert two.item() == pytest.approx(expected, rel=1e-6)


# The pairwise loss on a 3x3 image with 8 neighbours (dilation 1) per pixel: the corners have
# 3 inside the image, the edge pixels 5, the centre 8: 40 ordered pairs. Column 0 is predicted
# foreground (logit +4), the rest background (-4): 14 pairs cross between column 0 and column
# 1 (2 + 3 + 2 each way), 26 do not.
S = 1 / (1 + math.exp(-4.0))  # sigmoid(4)
CROSS = -math.log(2 * S * (1 - S))  # -log(p_i p_j + (1 - p_i)(1 - p_j)), labels differ
SAME = -math.log(S * S + (1 - S) * (1 - S))  # labels agree
LOGITS = grid([[4.0, -4.0, -4.0]] * 3)


def lab_of_rgb(pixels):
    """LAB [1, 3, H, W] of 8-bit RGB rows [[(r, g, b), ...], ...]."""
    rgb = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None]
    return rgb_to_lab(rgb / 255.0)


def test_pairwise_terms_by_hand():
    terms = pairwise_terms(LOGITS, 3, 1)
    assert terms.shape == (1, 8, 3, 3)
    # Pixel (1, 0): neighbours in row-major order (0,-1) (0,0) (0,1) (1,-1) (1,1) (2,-1) (2,0)
    # (2,1); (x, -1) lie beyond the border. (0,0) and (2,0) agree, the (x, 1) ones differ.
    got = terms[0, :, 1, 0]
    for k in (1, 6):
        assert got[k].item() == pytest.approx(SAME, rel=1e-5)
    for k in (2, 4, 7):
        assert got[k].item() == pytest.approx(CROSS, rel=1e-5)


def test_pairwise_uniform_colour_by_hand():
    lab = lab_of_rgb([[(90, 140, 200)] * 3] * 3)
    valid = torch.ones(1, 3, 3)
    similarity = color_similarity(lab, valid, 3, 1)
    # Equal colours: similarity 1 for the 40 neighbours inside the image, 0 beyond the border.
    assert similarity.sum().item() == pytest.approx(40.0)
    assert set(similarity.unique().tolist()) == {0.0, 1.0}
    whole = torch.ones(1, 1, 3, 3)
    loss = pairwise_loss(LOGITS, whole, similarity, 3, 1, 0.3)
    assert loss.item() == pytest.approx((14 * CROSS + 26 * SAME) / 40, rel=1e-5)
    # A box over column 0 only: its 3 pixels are the pixels i; 11 pairs, 7 of them crossing.
    box = grid([[1, 0, 0]] * 3)
    loss = pairwise_loss(LOGITS, box, similarity, 3, 1, 0.3)
    assert loss.item() == pytest.approx((7 * CROSS + 4 * SAME) / 11, rel=1e-5)
    # Neighbours that are not valid (bottom rows removed) drop out: with row 2 invalid, the 7
    # pairs from row 1 into row 2 (2 + 3 + 2) and the 4 within row 2 (1 + 2 + 1) are gone.
    valid[0, 2] = 0
    kept = color_similarity(lab, valid, 3, 1)
    assert kept.sum().item() == pytest.approx(40 - 11)
    assert kept[0, 5:, 1].sum().item() == 0.0  # row 1's lower neighbours (offsets (1, *))
    assert kept[0, :5, 2].sum().item() == pytest.approx(2 + 3 + 2)  # row 2 still sees row 1


def test_pairwise_edge_inside_the_box_by_hand():
    # Column 0 black, the rest white: across the edge the LAB distance is 100 (L 0 vs 100),
    # a similarity of exp(-50), below the threshold: the 14 crossing pairs do not count.
    lab = lab_of_rgb([[(0, 0, 0), (255, 255, 255), (255, 255, 255)]] * 3)
    assert lab[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert lab[0, :, 0, 1].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=1e-2)
    similarity = color_similarity(lab, torch.ones(1, 3, 3), 3, 1)
    assert similarity[0, 4, 1, 0].item() == pytest.approx(math.exp(-50.0), rel=1e-3)
    whole = torch.ones(1, 1, 3, 3)
    loss = pairwise_loss(LOGITS, whole, similarity, 3, 1, 0.3)
    assert loss.item() == pytest.approx(SAME, rel=1e-5)
    # The prediction that cuts along the edge costs ~0; one that ignores it pays for it.
    uniform = pairwise_loss(torch.full_like(LOGITS, 4.0), whole, similarity, 3, 1, 0.3)
    assert uniform.item() == pytest.approx(SAME, rel=1e-5)
    assert pairwise_loss(LOGITS, whole, torch.ones(1, 8, 3, 3), 3, 1, 0.3) > 10 * loss


@pytest.mark.parametrize("thresh", [0.3, 0.0, -1.0])
@pytest.mark.parametrize("size,dilation", [(3, 2), (3, 1), (5, 1)])
def test_pairwise_loss_gathers_the_pairs_of_the_dense_sum(thresh, size, dilation):
    """The loss computed on the counted pairs only equals the dense sum over all of them
    (AdelaiDet's form), several queries per instance, neighbours beyond the border included."""
    g = torch.Generator().manual_seed(2)
    num_gt, h, w = 3, 9, 11
    k = size * size - 1
    targets = (torch.rand(num_gt, 1, h, w, generator=g) > 0.4).float()
    similarity = torch.rand(num_gt, k, h, w, generator=g)
    similarity = similarity * neighbours(torch.ones(num_gt, 1, h, w), size, dilation)[:, 0]
    gt_inds = torch.tensor([2, 0, 0, 1, 2, 2, 0])
    logits = torch.randn(len(gt_inds), 1, h, w, generator=g, requires_grad=True)
    weights = (similarity[gt_inds] >= thresh).float() * targets[gt_inds]
    dense_terms = pairwise_terms(logits, size, dilation)
    dense = (dense_terms * weights).sum() / weights.sum().clamp(min=1.0)
    (dense_grad,) = torch.autograd.grad(dense, logits)
    sparse = pairwise_loss(logits, targets, similarity, size, dilation, thresh, gt_inds)
    (sparse_grad,) = torch.autograd.grad(sparse, logits)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-5)
    torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-4, atol=1e-7)


def test_neighbours_match_a_loop_at_dilation_2():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(1, 2, 5, 6)
    got = neighbours(x, 3, 2)
    offsets = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2) if (dy, dx) != (0, 0)]
    for k, (dy, dx) in enumerate(offsets):
        for y in range(5):
            for xx in range(6):
                inside = 0 <= y + dy < 5 and 0 <= xx + dx < 6
                want = x[0, :, y + dy, xx + dx] if inside else torch.zeros(2)
                assert torch.equal(got[0, :, k, y, xx], want)
    with pytest.raises(ValueError, match="PAIRWISE.SIZE must be odd"):
        neighbours(x, 4, 1)


def test_warmup_ramps_the_pairwise_loss():
    crit = criterion(warmup_iters=4)
    inst = make_input(8, 8, [[0, 0, 7, 7]], [0])["instances"]
    inst.gt_bitmasks = torch.ones(1, 2, 2)
    inst.image_color_similarity = torch.ones(1, 8, 2, 2)
    logits = torch.tensor([[[[3.0, -3.0], [-3.0, 3.0]]]])
    full = pairwise_loss(logits, inst.gt_bitmasks[:, None], inst.image_color_similarity, 3, 2, 0.3)
    for iteration, factor in ((0, 0.25), (2, 0.75), (3, 1.0), (50, 1.0)):
        losses = crit.losses(logits, torch.tensor([0]), [inst], torch.tensor([float(iteration)]))
        assert losses["loss_pairwise"].item() == pytest.approx(factor * full.item())
        assert losses["loss_prj"].item() == pytest.approx(
            projection_loss(logits.sigmoid(), inst.gt_bitmasks[:, None]).item()
        )


# LAB and the colour similarity against scikit-image.

LAB_TOLERANCE = 1e-3  # LAB units (L in [0, 100]); float32 here against float64 there: ~5e-5
SIMILARITY_TOLERANCE = 2e-4


def test_rgb_to_lab_matches_scikit_image():
    color = pytest.importorskip("skimage.color")
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (2, 3, 19, 23), generator=g).float()
    rgb[0, :, 0, :6] = torch.tensor([0.0, 255.0, 1.0, 10.0, 128.0, 254.0])[None]  # extremes, grey
    ours = rgb_to_lab(rgb / 255.0).permute(0, 2, 3, 1).double().numpy()
    ref = np.stack([color.rgb2lab(im.permute(1, 2, 0).numpy().astype(np.uint8)) for im in rgb])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=LAB_TOLERANCE)


def reference_similarity(image_bgr, im_h, im_w, original_h, removed_rows, stride, size, dilation):
    """AdelaiDet's recipe written independently in numpy and scikit-image: average-pool the
    padded 8-bit image, truncate to 8 bits, RGB to LAB, then per neighbour offset
    exp(-|lab_i - lab_j| / 2) times the neighbour's validity."""
    color = pytest.importorskip("skimage.color")
    _, h, w = image_bgr.shape
    pooled = image_bgr.reshape(3, h // stride, stride, w // stride, stride).mean(axis=(2, 4))
    rgb = np.floor(pooled)[::-1].transpose(1, 2, 0).astype(np.uint8)
    lab = color.rgb2lab(rgb)
    valid = np.zeros((h, w))
    removed = int(removed_rows * im_h / original_h)
    valid[: im_h - removed, :im_w] = 1
    valid = valid[stride // 2 :: stride, stride // 2 :: stride]
    hh, ww = valid.shape
    r = size // 2
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    out = np.zeros((len(offsets), hh, ww))
    for k, (dy, dx) in enumerate(offsets):
        for y in range(hh):
            for x in range(ww):
                ny, nx = y + dy * dilation, x + dx * dilation
                if 0 <= ny < hh and 0 <= nx < ww:
                    distance = np.linalg.norm(lab[y, x] - lab[ny, nx])
                    out[k, y, x] = np.exp(-0.5 * distance) * valid[ny, nx]
    return out


def test_image_similarity_matches_an_independent_implementation():
    g = torch.Generator().manual_seed(1)
    padded = torch.zeros(2, 3, 24, 32, dtype=torch.uint8)
    sizes = [(17, 26), (24, 32)]
    originals = [34, 24]  # image 0 was resized by half: 10 original rows are 5 here
    # Smooth colours plus noise, so that some pairs are above the threshold and some below.
    for i, (h, w) in enumerate(sizes):
        base = torch.randint(40, 200, (3, 1, 1), generator=g)
        noise = torch.randint(-6, 7, (3, h, w), generator=g)
        ramp = torch.arange(w)[None, None] * 3
        padded[i, :, :h, :w] = (base + noise + ramp).clamp(0, 255).to(torch.uint8)
    crit = criterion(bottom_pixels_removed=10)
    ours = crit.image_similarity(padded, sizes, originals, 4)
    for i, (h, w) in enumerate(sizes):
        ref = reference_similarity(
            padded[i].numpy().astype(np.float64), h, w, originals[i], 10, 4, 3, 2
        )
        np.testing.assert_allclose(ours[i].double().numpy(), ref, rtol=0, atol=SIMILARITY_TOLERANCE)
        above = ref >= 0.3
        assert 0 < above.sum() < above.size
        margin = np.abs(ref - 0.3) > SIMILARITY_TOLERANCE
        assert np.array_equal((ours[i].numpy() >= 0.3)[margin], above[margin])


# The model.


def boxinst_config(**overrides):
    return tiny_config(
        **{
            "MODEL.BOXINST.ENABLED": True,
            "MODEL.CONDINST.MAX_PROPOSALS": -1,
            "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM": 64,
            "MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS": 16,
            **overrides,
        }
    )


def test_boxinst_trains_from_boxes_and_infers_masks():
    torch.manual_seed(0)
    model = build_model(boxinst_config())
    model.train()
    batch = [
        make_input(96, 128, [[4.5, 6.2, 40.0, 50.9], [50.0, 40.0, 120.0, 90.0]], [0, 2], seed=1),
        make_input(112, 80, [[10.0, 20.0, 60.0, 70.0]], [1], seed=2),
    ]
    for x in batch:
        x["instances"].remove("gt_masks")  # boxes only, as BoxInst's mapper gives
    images = model.preprocess_image(batch)
    targets = model.prepare_targets(batch, images)
    padded = images.tensor.shape[-2:]
    assert torch.equal(targets[0].gt_bitmasks_full, box_masks(targets[0].gt_boxes.tensor, *padded))
    assert torch.equal(targets[0].gt_bitmasks, targets[0].gt_bitmasks_full[:, 2::4, 2::4].float())
    similarity = targets[1].image_color_similarity
    assert similarity.shape == (1, 8, padded[0] // 4, padded[1] // 4)
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {
        "loss_fcos_cls",
        "loss_fcos_loc",
        "loss_fcos_ctr",
        "loss_prj",
        "loss_pairwise",
    }
    # First iteration: the pairwise loss at 1 / WARMUP_ITERS of its weight.
    assert 0 < losses["loss_pairwise"].item() < 1e-3
    sum(losses.values()).backward()
    assert model.controller.weight.grad.abs().sum() > 0
    assert model.mask_branch.tower[-1].weight.grad.abs().sum() > 0
    assert model.mask_head._iter.item() == 1

    model.eval()
    with torch.no_grad():
        image = make_input(192, 256, [], [], seed=5)["image"]
        (out,) = model([{"image": image, "height": 96, "width": 128}])
    assert out["instances"].pred_masks.shape[-2:] == (96, 128)


def test_boxinst_without_queries_keeps_every_parameter_in_the_graph():
    model = build_model(boxinst_config())
    model.train()
    batch = [make_input(96, 128, [], [], seed=3), make_input(128, 96, [], [], seed=4)]
    for x in batch:
        x["instances"].remove("gt_masks")
    with EventStorage(0):
        losses = model(batch)
    assert losses["loss_prj"].item() == 0 and losses["loss_pairwise"].item() == 0
    assert losses["loss_prj"].requires_grad


def test_boxinst_is_refused_for_iuq():
    with pytest.raises(ValueError, match="trains plain CondInst.*not IUQCondInst"):
        build_model(boxinst_config(**{"MODEL.META_ARCHITECTURE": "IUQCondInst"}))


def test_boxinst_needs_a_known_colour_order():
    with pytest.raises(ValueError, match="INPUT.FORMAT 'BGR' or 'RGB'"):
        build_model(boxinst_config(**{"INPUT.FORMAT": "YUV-BT.601"}))


def test_adelaidet_boxinst_config_builds_its_layout():
    """configs/BoxInst/MS_R_50_1x.yaml: AdelaiDet's CondInst layout with its 16-channel mask
    branch, so that its BoxInst checkpoints load (same names, those shapes)."""
    from iuq_d2.engine.config_loader import load_config

    cfg = load_config(os.path.join(REPO, "configs", "BoxInst", "MS_R_50_1x.yaml"), freeze=False)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.BOXINST.ENABLED and cfg.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS == 10000
    assert cfg.MODEL.CONDINST.TOPK_PROPOSALS_PER_IM == 64
    state = build_model(cfg).state_dict()
    assert state["mask_branch.tower.4.weight"].shape == (16, 128, 1, 1)
    # (16 + 2) * 8 + 8 + 8 * 8 + 8 + 8 + 1 dynamic parameters per query.
    assert state["controller.weight"].shape[0] == 233
