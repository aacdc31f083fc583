"""The instance-contrastive representation term (MODEL.IUQ.CONTRAST)."""

import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from iuq_d2.layers.instance_contrast import instance_contrast_loss
from iuq_d2.modeling.iuq import InstanceContrastCriterion, instance_contrast
from iuq_d2.modeling.iuq.inter_scene import sample_instance_cells
from iuq_d2.strip_checkpoint import strip_checkpoint

from .conftest import make_input, tiny_config


def _hand_loss(anchors, keys, anchor_inst, key_inst, t, allowed=None, self_index=None):
    """Loop over anchors, positives and candidates: -mean_p log(e^{s_ap} / sum_k e^{s_ak})."""
    total, counted = 0.0, 0
    for a in range(len(anchors)):
        candidates, positives = [], []
        for k in range(len(keys)):
            if self_index is not None and self_index[a] == k:
                continue
            same = anchor_inst[a] == key_inst[k]
            if same:
                positives.append(k)
            if same or allowed is None or allowed[a][k]:
                candidates.append(k)
        if not positives:
            continue
        sims = {k: float(anchors[a] @ keys[k]) / t for k in candidates}
        log_den = math.log(sum(math.exp(v) for v in sims.values()))
        total += -sum(sims[p] - log_den for p in positives) / len(positives)
        counted += 1
    return total / counted


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def test_loss_by_hand_with_self_pairs_left_out():
    keys = _unit(7, 4, 0)
    key_inst = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    anchor_rows = torch.tensor([0, 2, 5, 6])  # instances 2 and 3 have no other cell
    loss = instance_contrast_loss(
        keys[anchor_rows], keys, key_inst[anchor_rows], key_inst, 0.5, anchor_key_index=anchor_rows
    )
    anchor_inst = key_inst[anchor_rows].tolist()
    expected = _hand_loss(
        keys[anchor_rows],
        keys,
        anchor_inst,
        key_inst.tolist(),
        0.5,
        self_index=anchor_rows.tolist(),
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_key_mask_keeps_only_allowed_negatives():
    anchors, keys = _unit(3, 5, 1), _unit(6, 5, 2)
    anchor_inst = torch.tensor([0, 1, 2])
    key_inst = torch.tensor([0, 1, 1, 2, 3, 4])
    allowed = torch.tensor(
        [[1, 0, 0, 1, 1, 0], [0, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 0]], dtype=torch.bool
    )
    loss = instance_contrast_loss(anchors, keys, anchor_inst, key_inst, 0.2, key_mask=allowed)
    expected = _hand_loss(anchors, keys, anchor_inst.tolist(), key_inst.tolist(), 0.2, allowed)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    # A negative that is not allowed does not count: the loss differs from the unmasked one.
    unmasked = instance_contrast_loss(anchors, keys, anchor_inst, key_inst, 0.2)
    assert abs(unmasked.item() - loss.item()) > 1e-3


def test_no_positive_gives_zero_with_graph():
    anchors = _unit(2, 3, 3).requires_grad_()
    keys = _unit(2, 3, 4)
    loss = instance_contrast_loss(anchors, keys, torch.tensor([0, 1]), torch.tensor([2, 3]), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(anchors.grad, torch.zeros_like(anchors))


def _criterion(**overrides):
    args = dict(
        in_channels=3,
        projection_dims=(),
        feat_stride=8,
        weight=1.0,
        temperature=0.1,
        pixels_per_instance=4,
        max_anchors=-1,
    )
    args.update(overrides)
    return InstanceContrastCriterion(**args)


def _instances_and_feats(identity_feats: bool):
    """Two images, three instances with box-shaped masks, and mask features that are either
    one direction per instance (an ideal instance-unique representation) or random."""
    batch = [
        make_input(64, 64, [[0, 0, 32, 32], [32, 32, 64, 64]], [0, 0], seed=1),
        make_input(64, 64, [[8, 8, 48, 40]], [0], seed=2),
    ]
    model = build_model(tiny_config())
    gt = model.prepare_targets(batch, model.preprocess_image(batch))
    feats = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    if identity_feats:
        feats = torch.zeros(2, 3, 8, 8)
        for b, inst in enumerate(gt):
            for i, mask in enumerate(inst.gt_bitmasks_full[:, 4::8, 4::8]):
                feats[b, b * 2 + i][mask.bool()] = 1.0
    return feats, gt


def test_an_instance_unique_representation_has_a_low_loss():
    torch.manual_seed(0)
    ids = torch.tensor([11, 12])
    ideal = _criterion()(*_instances_and_feats(True), ids)["loss_contrast"]
    random = _criterion()(*_instances_and_feats(False), ids)["loss_contrast"]
    # With one unit direction per instance every positive has similarity 1 and every negative
    # 0: -log(e^10 / (3 e^10 + 8)) for each of the 12 anchors (3 positives, 8 negatives).
    assert ideal.item() == pytest.approx(math.log(3 + 8 * math.exp(-10)), rel=1e-5)
    assert random.item() > ideal.item() + 1.0


def test_other_images_scope_ignores_neighbours_in_the_same_image():
    torch.manual_seed(0)
    feats, gt = _instances_and_feats(True)
    # The two instances of image 0 made identical: for "all" they are now indistinguishable
    # negatives, for "other_images" they are not compared at all.
    feats[0, 1] = feats[0, 0] = feats[0, 0] + feats[0, 1]
    ids = torch.tensor([11, 12])
    every = _criterion()(feats, gt, ids)["loss_contrast"]
    other = _criterion(negatives="other_images")(feats, gt, ids)["loss_contrast"]
    assert other.item() < every.item() - 0.5


def test_options_are_checked():
    with pytest.raises(ValueError, match="NEGATIVES"):
        _criterion(negatives="same_image")
    with pytest.raises(ValueError, match="PIXELS_PER_INSTANCE"):
        _criterion(pixels_per_instance=1)
    with pytest.raises(ValueError, match="TEMPERATURE"):
        _criterion(temperature=0.0)
    with pytest.raises(ValueError, match="MAX_ANCHORS"):
        _criterion(max_anchors=0)


def _identity_feats_hand_loss(feats, gt, ids, anchor_rows, prefix=None):
    """The criterion's loss recomputed by hand (identity projection) from the cells
    :func:`sample_instance_cells` drew, optionally after other ranks' ``prefix`` keys."""
    images, rows, cols, instances = sample_instance_cells(gt, feats.shape[-2:], 8, 4)
    emb = F.normalize(feats[images, :, rows, cols].double(), dim=1)
    first = torch.tensor([0, len(gt[0])])[images]
    inst = (ids[images] * 65536 + instances - first).tolist()
    keys, key_inst, offset = emb, inst, 0
    if prefix is not None:
        keys = torch.cat([prefix[0].double(), emb])
        key_inst = prefix[1].tolist() + inst
        offset = len(prefix[0])
    rows_ = anchor_rows.tolist()
    return _hand_loss(
        emb[anchor_rows],
        keys,
        [inst[r] for r in rows_],
        key_inst,
        0.1,
        self_index=[r + offset for r in rows_],
    )


def test_a_subset_of_anchors_against_every_key():
    feats, gt = _instances_and_feats(False)
    ids = torch.tensor([11, 12])
    torch.manual_seed(3)
    loss = _criterion(max_anchors=5)(feats, gt, ids)["loss_contrast"]
    torch.manual_seed(3)  # the same draws: the cells, then the anchors among the 12
    sample_instance_cells(gt, feats.shape[-2:], 8, 4)
    anchor_rows = torch.randperm(12)[:5]
    torch.manual_seed(3)
    expected = _identity_feats_hand_loss(feats, gt, ids, anchor_rows)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_higher_rank_keeps_its_rows_after_the_lower_ranks(monkeypatch):
    feats, gt = _instances_and_feats(False)
    feats.requires_grad_(True)
    ids = torch.tensor([11, 12])
    # Rank 0's rows: two cells of another image's instance, and one of image 11's first
    # instance (the same image sampled on rank 0 too: a positive, not a negative).
    lower = F.normalize(torch.randn(3, 3, generator=torch.Generator().manual_seed(9)), dim=1)
    lower_inst = torch.tensor([99 * 65536, 99 * 65536, 11 * 65536])
    lower_ids = torch.tensor([99, 99, 11])

    def gather(*tensors):
        return [
            torch.cat([lower, tensors[0]]),
            torch.cat([lower_inst, tensors[1]]),
            torch.cat([lower_ids, tensors[2]]),
        ], [3, len(tensors[0])]

    monkeypatch.setattr(instance_contrast.comm, "get_rank", lambda: 1)
    monkeypatch.setattr(instance_contrast, "all_gather_rows", gather)
    torch.manual_seed(4)
    loss = _criterion()(feats, gt, ids)["loss_contrast"]
    torch.manual_seed(4)
    expected = _identity_feats_hand_loss(
        feats.detach(), gt, ids, torch.arange(12), prefix=(lower, lower_inst)
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert feats.grad.abs().sum() > 0


def _contrast_model():
    return build_model(
        tiny_config(
            **{
                "MODEL.META_ARCHITECTURE": "IUQCondInst",
                "MODEL.IUQ.EQUI.ENABLED": False,
                "MODEL.IUQ.INTER.ENABLED": False,
                "MODEL.IUQ.CONTRAST.ENABLED": True,
                "MODEL.IUQ.CONTRAST.PIXELS_PER_INSTANCE": 4,
            }
        )
    )


def test_training_step_trains_the_mask_branch_and_the_projection_only():
    torch.manual_seed(0)
    model = _contrast_model()
    batch = [
        make_input(96, 128, [[10, 12, 60, 70], [50, 40, 120, 90]], [0, 2], seed=1),
        make_input(112, 80, [[5, 5, 30, 40]], [1], seed=2),
    ]
    with EventStorage():
        losses = model(batch)
    loss = losses["loss_contrast"]
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["contrast.projection.0.weight"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "mask_branch" in n)
    assert grads["controller.weight"] is None


def test_projection_is_training_only_state():
    model = _contrast_model()
    keys = [k for k in model.state_dict() if k.startswith("contrast.")]
    assert keys
    stripped = strip_checkpoint({"model": model.state_dict()})["model"]
    assert not any(k.startswith("contrast.") for k in stripped)
    build_model(tiny_config()).load_state_dict(stripped, strict=True)
