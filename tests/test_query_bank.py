"""The query bank and the inter-scene uniqueness loss."""

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from iuq_d2.engine import AtomicCheckpointer
from iuq_d2.layers import dynamic_mlp, parse_dynamic_params
from iuq_d2.layers.dense_mask_head import reference_dense_mask_logits
from iuq_d2.layers.inter_scene import inter_scene_focal_loss, inter_scene_mean_sq_prob
from iuq_d2.modeling.iuq import BankEntries, QueryBank
from iuq_d2.strip_checkpoint import main as strip_main
from iuq_d2.strip_checkpoint import strip_checkpoint

from .conftest import make_input, tiny_config


def iuq_config(**overrides):
    return tiny_config(
        **{
            "MODEL.META_ARCHITECTURE": "IUQCondInst",
            "MODEL.IUQ.EQUI.ENABLED": False,
            "MODEL.IUQ.INTER.BANK_SIZE": 500,
            "MODEL.IUQ.INTER.LOSS_WEIGHT": 1.0,  # the hand computations are unweighted
            "MODEL.IUQ.INTER.PIXELS_PER_INSTANCE": 6,
            **overrides,
        }
    )


def _entries(n, image_id=0, start=0.0, c=3):
    values = torch.arange(start, start + n, dtype=torch.float32)
    return BankEntries(
        feats=values[:, None].repeat(1, c),
        positions=values[:, None].repeat(1, 2),
        offsets=-values[:, None].repeat(1, 2),
        image_ids=torch.full((n,), image_id),
        classes=torch.zeros(n, dtype=torch.int64),
    )


def test_ring_buffer_wraps_around():
    bank = QueryBank(5, 3)
    bank.enqueue(_entries(3, start=0))
    assert bank.num_filled == 3 and int(bank.ptr) == 3
    bank.enqueue(_entries(4, start=10))  # slots 3, 4, 0, 1
    assert int(bank.ptr) == 2 and bank.num_filled == 5
    assert bank.feats[:, 0].tolist() == [12, 13, 2, 10, 11]
    bank.enqueue(_entries(7, start=20))  # more than capacity: the last 5 are kept, from slot 2
    assert sorted(bank.feats[:, 0].tolist()) == [22, 23, 24, 25, 26]
    assert int(bank.ptr) == 2


def test_sampling_returns_distinct_filled_entries():
    bank = QueryBank(100, 3)
    bank.enqueue(_entries(30, start=0))
    sample = bank.sample(10, generator=torch.Generator().manual_seed(0))
    values = sample.feats[:, 0].tolist()
    assert len(values) == 10 and len(set(values)) == 10 and all(0 <= v < 30 for v in values)
    assert len(bank.sample(1000)) == 30
    assert len(QueryBank(10, 3).sample(5)) == 0


def _prepared(model, batch):
    images = model.preprocess_image(batch)
    return images, model.prepare_targets(batch, images)


def test_instance_balanced_sampling_counts_and_locations():
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.PIXELS_PER_INSTANCE": 7}))
    # a large instance, a small one covering two stride-8 centres, and a 3x3 one covering none
    batch = [make_input(96, 128, [[8, 8, 88, 72], [40, 80, 56, 88], [100, 10, 103, 13]], [0, 1, 2])]
    images, gt = _prepared(model, batch)
    feats = torch.randn(1, model.mask_branch.out_channels, 12, 16)
    entries, _ = model.inter_scene.collect(feats, gt, torch.tensor([42]))
    assert len(entries) == 3 * 7
    assert (entries.image_ids == 42).all()
    x, y = entries.positions[:, 0], entries.positions[:, 1]
    big = slice(0, 7)
    assert ((x[big] > 8) & (x[big] < 88) & (y[big] > 8) & (y[big] < 72)).all()
    assert len(set(map(tuple, entries.positions[big].tolist()))) == 7  # without replacement
    assert set(map(tuple, entries.positions[7:14].tolist())) <= {(44.0, 84.0), (52.0, 84.0)}
    assert set(map(tuple, entries.positions[14:].tolist())) == {(100.0, 12.0)}  # box centre cell
    torch.testing.assert_close(
        entries.offsets[0], torch.tensor([48.0, 40.0]) - entries.positions[0]
    )
    cell = ((entries.positions - 4) / 8).long()
    torch.testing.assert_close(entries.feats, feats[0, :, cell[:, 1], cell[:, 0]].t())


def _hand_loss(params, rel, feats, shapes, alpha=0.25, gamma=2.0):
    """Loop over pairs with the generic dynamic MLP."""
    weights, biases = parse_dynamic_params(params, shapes)
    total, count = 0.0, 0
    for q in range(params.shape[0]):
        for n in range(feats.shape[0]):
            if rel[q][n] is None:
                continue
            x = torch.cat([rel[q][n], feats[n]])[None, :, None]
            logit = dynamic_mlp(x, [w[q : q + 1] for w in weights], [b[q : q + 1] for b in biases])[
                0, 0, 0
            ]
            p = torch.sigmoid(logit)
            total += -(1 - alpha) * p**gamma * torch.log(1 - p)
            count += 1
    return total / count


def test_focal_loss_and_same_image_masking_by_hand():
    torch.manual_seed(0)
    shapes = [(8, 5), (8, 8), (1, 8)]
    params = torch.randn(2, sum(o * i + o for o, i in shapes))
    q_anchor = torch.tensor([[10.0, 20.0], [30.0, 5.0]])
    soi = torch.tensor([64.0, 128.0])
    q_img = torch.tensor([0, 1])
    feats = torch.randn(4, 3)
    p_anchor = torch.randn(4, 2) * 50
    p_img = torch.tensor([0, 1, 2, 2])
    loss, stats = inter_scene_focal_loss(
        params, q_anchor, soi, q_img, feats, p_anchor, p_img, shapes
    )
    rel = [
        [None if p_img[n] == q_img[q] else (q_anchor[q] - p_anchor[n]) / soi[q] for n in range(4)]
        for q in range(2)
    ]
    assert stats.num_pairs.item() == 6
    torch.testing.assert_close(loss, _hand_loss(params, rel, feats, shapes))


def test_no_valid_pair_gives_zero_with_graph():
    shapes = [(8, 5), (8, 8), (1, 8)]
    params = torch.randn(1, sum(o * i + o for o, i in shapes), requires_grad=True)
    loss, stats = inter_scene_focal_loss(
        params,
        torch.zeros(1, 2),
        torch.ones(1),
        torch.tensor([3]),
        torch.randn(5, 3),
        torch.zeros(5, 2),
        torch.full((5,), 3),
        shapes,
    )
    assert loss.item() == 0.0 and stats.num_pairs.item() == 0
    loss.backward()
    assert params.grad is not None


def test_no_query_gives_zero_with_graph():
    shapes = [(8, 5), (8, 8), (1, 8)]
    params = torch.zeros(0, sum(o * i + o for o, i in shapes), requires_grad=True)
    loss, stats = inter_scene_focal_loss(
        params,
        torch.zeros(0, 2),
        torch.ones(0),
        torch.zeros(0, dtype=torch.long),
        torch.randn(5, 3),
        torch.zeros(5, 2),
        torch.arange(5),
        shapes,
    )
    assert loss.item() == 0.0 and stats.num_pairs.item() == 0
    loss.backward()
    assert params.grad is not None


def _rel_x_query(model) -> Instances:
    """One query of image 0 at (200, 40), size of interest 128, whose dynamic head's logit is
    relu(rel_x): the features are ignored, so the loss reveals the relative coordinates."""
    head = model.mask_head
    params = torch.zeros(1, head.num_params)
    w0, w1 = 8 * (head.in_channels + 2), 8 * 8
    params[0, 0], params[0, w0], params[0, w0 + w1] = 1.0, 1.0, 1.0
    queries = Instances((0, 0))
    queries.mask_head_params = params
    queries.locations = torch.tensor([[200.0, 40.0]])
    queries.fpn_levels = torch.tensor([1])  # size of interest 128
    queries.im_inds = torch.tensor([0])
    return queries


@pytest.mark.parametrize("mode", ["instance_centered", "overlay"])
def test_relative_coordinates_of_the_two_modes(mode):
    """With a head whose logit is relu(rel_x) (features ignored), the loss reveals rel_x."""
    model = build_model(
        iuq_config(**{"MODEL.IUQ.INTER.COORDS": mode, "MODEL.IUQ.INTER.NUM_NEGATIVES": 0})
    )
    queries = _rel_x_query(model)
    c = model.mask_head.in_channels
    # One instance in image 1: box centre (52, 60); its only covered cell centres are (44, 60)
    # and (52, 60).
    batch = [
        make_input(64, 64, [], [], seed=0),
        make_input(96, 128, [[40, 56, 58, 64]], [0], seed=1),
    ]
    images, gt = _prepared(model, batch)
    outputs = type("Out", (), {"mask_feats": torch.zeros(2, c, 12, 16)})
    with EventStorage():
        loss = model.inter_scene(outputs.mask_feats, queries, gt, torch.tensor([0, 1]), 0)[
            "loss_inter"
        ]
    pixels = model.inter_scene.bank.positions[: model.inter_scene.bank.num_filled]
    if mode == "instance_centered":
        rel_x = (49.0 - pixels[:, 0]) / 128  # box centre x is (40 + 58) / 2 = 49
    else:
        rel_x = (200.0 - pixels[:, 0]) / 128
    p = torch.sigmoid(rel_x.clamp(min=0))
    expected = (0.75 * p**2 * -torch.log(1 - p)).mean()
    torch.testing.assert_close(loss, expected)


def test_random_coordinates_lie_within_the_smallest_size_of_interest():
    """The relu(rel_x) head again, with many entries: under "random" rel_x is uniform in
    [-64/128, 64/128] for a query of size of interest 128, whatever the pixel's position."""
    torch.manual_seed(0)
    model = build_model(
        iuq_config(
            **{
                "MODEL.IUQ.INTER.COORDS": "random",
                "MODEL.IUQ.INTER.NUM_NEGATIVES": 0,
                "MODEL.IUQ.INTER.PIXELS_PER_INSTANCE": 4000,
                "MODEL.IUQ.INTER.MAX_BATCH_ENTRIES": -1,
            }
        )
    )
    queries = _rel_x_query(model)
    c = model.mask_head.in_channels
    batch = [
        make_input(64, 64, [], [], seed=0),
        make_input(96, 128, [[40, 56, 58, 64]], [0], seed=1),
    ]
    _, gt = _prepared(model, batch)
    with EventStorage():
        loss = model.inter_scene(torch.zeros(2, c, 12, 16), queries, gt, torch.tensor([0, 1]), 0)
    u = torch.linspace(-0.5, 0.5, 100001)
    p = torch.sigmoid(u.clamp(min=0))
    expected = (0.75 * p**2 * -torch.log(1 - p)).mean()
    # 4000 entries: the mean's standard error is under 1% of it.
    torch.testing.assert_close(loss["loss_inter"], expected, rtol=0.05, atol=0.0)


def _inter_loss_of(queries, mask_dice=None, **overrides):
    """loss_inter of ``queries`` (image 0 of a two-image batch: one instance of class 2, and
    instances of classes 1 and 2 in image 1; no bank samples), and the model it came from."""
    torch.manual_seed(0)
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.NUM_NEGATIVES": 0, **overrides}))
    batch = [
        make_input(64, 64, [[8, 8, 40, 40]], [2], seed=0),
        make_input(96, 128, [[4, 8, 40, 60], [60, 8, 120, 60]], [1, 2], seed=1),
    ]
    _, gt = _prepared(model, batch)
    c = model.mask_head.in_channels
    with EventStorage():
        losses = model.inter_scene(
            torch.zeros(2, c, 12, 16), queries, gt, torch.tensor([0, 1]), 0, mask_dice
        )
    return losses["loss_inter"], model


def test_same_class_only_keeps_the_pairs_with_the_query_class():
    """The relu(rel_x) head with overlay pairs: the loss is the mean over the other image's
    entries of the query's class only, read back from the bank."""
    queries = _rel_x_query(build_model(iuq_config()))
    queries.gt_inds = torch.tensor([0])  # image 0's instance, class 2
    loss, model = _inter_loss_of(queries, **{"MODEL.IUQ.INTER.SAME_CLASS_ONLY": True})
    bank = model.inter_scene.bank
    filled = bank.num_filled
    assert sorted(bank.classes[:filled].tolist()) == [1] * 6 + [2] * 12
    keep = (bank.classes[:filled] == 2) & (bank.image_ids[:filled] == 1)
    rel_x = (200.0 - bank.positions[:filled][keep, 0]) / 128
    p = torch.sigmoid(rel_x.clamp(min=0))
    expected = (0.75 * p**2 * -torch.log(1 - p)).mean()
    torch.testing.assert_close(loss, expected)


def test_min_own_dice_scores_only_the_queries_that_fit_their_own_mask():
    """Two relu(rel_x) queries at different places; their own dice coefficients (2 inter /
    union) are 0.9 and 0.5: at MIN_OWN_DICE 0.8 the loss is the first one's alone, at 0.95
    nobody is scored and the loss is an exact zero that still back-propagates."""
    one = _rel_x_query(build_model(iuq_config()))
    two = Instances.cat([one, one])
    two.locations = torch.tensor([[200.0, 40.0], [100.0, 40.0]])
    two.mask_head_params = two.mask_head_params.clone().requires_grad_(True)
    dice = (torch.tensor([0.45, 0.25]), torch.tensor([1.0, 1.0]))
    gate = "MODEL.IUQ.INTER.MIN_OWN_DICE"
    both, _ = _inter_loss_of(two, dice)
    first_only, _ = _inter_loss_of(two, dice, **{gate: 0.8})
    alone, _ = _inter_loss_of(one, (dice[0][:1], dice[1][:1]))
    torch.testing.assert_close(first_only, alone)
    assert not torch.allclose(both, alone)
    nobody, _ = _inter_loss_of(two, dice, **{gate: 0.95})
    assert nobody.item() == 0.0
    nobody.backward()
    assert two.mask_head_params.grad is not None


def test_min_own_dice_is_checked():
    with pytest.raises(ValueError, match="MIN_OWN_DICE must be in"):
        build_model(iuq_config(**{"MODEL.IUQ.INTER.MIN_OWN_DICE": 1.5}))
    with pytest.raises(ValueError, match="MIN_OWN_DICE needs LOSS_FORM"):
        build_model(
            iuq_config(**{"MODEL.IUQ.INTER.MIN_OWN_DICE": 0.5, "MODEL.IUQ.INTER.LOSS_FORM": "dice"})
        )


def test_bank_without_classes_loads_them_as_unknown():
    model = build_model(iuq_config())
    state = {k: v for k, v in model.state_dict().items() if k != "inter_scene.bank.classes"}
    restored = build_model(iuq_config())
    restored.inter_scene.bank.classes.fill_(3)
    restored.load_state_dict(state, strict=True)
    assert restored.inter_scene.bank.classes.eq(-1).all()


def _two_image_batch():
    return [
        make_input(96, 128, [[10, 12, 60, 70], [50, 40, 120, 90]], [0, 2], seed=1),
        make_input(112, 80, [[5, 5, 30, 40]], [1], seed=2),
    ]


def test_training_step_fills_bank_and_logs():
    torch.manual_seed(0)
    model = build_model(iuq_config())
    with EventStorage() as storage:
        losses = model(_two_image_batch())
        assert "loss_inter" in losses and torch.isfinite(losses["loss_inter"])
        assert model.inter_scene.bank.num_filled == 3 * 6
        latest = storage.latest()
        for key in (
            "iuq/bank_fill",
            "iuq/inter_frac_firing",
            "iuq/entries_this_rank",
            "iuq/entries_gathered",
        ):
            assert key in latest
        assert latest["iuq/entries_this_rank"][0] == 18


def test_inter_loss_reaches_only_the_query_path():
    torch.manual_seed(0)
    model = build_model(iuq_config())
    with EventStorage():
        model(_two_image_batch())  # fill the bank with the first batch
        losses = model(_two_image_batch())
    losses["loss_inter"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["controller.weight"] is not None and grads["controller.weight"].abs().sum() > 0
    tower = [n for n in grads if n.startswith("proposal_generator.fcos_head.bbox_tower")]
    assert all(
        grads[n] is not None and grads[n].abs().sum() > 0 for n in tower if n.endswith("weight")
    )
    assert all(grads[n] is None for n in grads if n.startswith("mask_branch."))
    assert all(grads[n] is None for n in grads if n.startswith("proposal_generator.fcos_head.cls_"))


def test_warmup_scales_the_weight_linearly():
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.WARMUP_ITERS": 4}))
    assert model.inter_scene.warmup_factor(1) == 0.25
    assert model.inter_scene.warmup_factor(10) == 1.0


def test_eval_is_bit_identical_to_condinst():
    torch.manual_seed(0)
    iuq = build_model(iuq_config(**{"MODEL.FCOS.INFERENCE_TH_TEST": 0.0}))
    with EventStorage():
        iuq(_two_image_batch())  # a training step changes BN statistics and fills the bank
    plain = build_model(tiny_config(**{"MODEL.FCOS.INFERENCE_TH_TEST": 0.0}))
    missing, unexpected = plain.load_state_dict(iuq.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("inter_scene.bank.") for k in unexpected)
    iuq.eval()
    plain.eval()
    with torch.no_grad():
        a, b = iuq(_two_image_batch()), plain(_two_image_batch())
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) > 0
        for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            u, v = x.get(field), y.get(field)
            u, v = (u.tensor, v.tensor) if field == "pred_boxes" else (u, v)
            assert torch.equal(u, v), field


def test_bank_checkpoint_round_trip_and_strip(tmp_path):
    torch.manual_seed(0)
    model = build_model(iuq_config())
    with EventStorage():
        model(_two_image_batch())
    AtomicCheckpointer(model, str(tmp_path)).save("model_x")
    restored = build_model(iuq_config())
    AtomicCheckpointer(restored, str(tmp_path)).resume_or_load(
        os.path.join(tmp_path, "model_x.pth")
    )
    for name in ("feats", "positions", "offsets", "image_ids", "valid", "iters", "ptr"):
        assert torch.equal(
            getattr(model.inter_scene.bank, name), getattr(restored.inter_scene.bank, name)
        ), name
    assert restored.inter_scene.bank.num_filled == 18

    strip_main([str(tmp_path / "model_x.pth"), str(tmp_path / "deploy.pth")])
    deploy = torch.load(tmp_path / "deploy.pth", weights_only=True)
    assert not any(k.startswith("inter_scene.") for k in deploy["model"])
    build_model(tiny_config()).load_state_dict(deploy["model"], strict=True)


def test_checkpoint_with_the_old_bank_keys_loads(tmp_path):
    torch.manual_seed(0)
    model = build_model(iuq_config())
    with EventStorage():
        model(_two_image_batch())
    # Before the criteria, the bank sat at query_bank.* and had no iters buffer.
    old = {
        k.replace("inter_scene.bank.", "query_bank."): v
        for k, v in model.state_dict().items()
        if k != "inter_scene.bank.iters"
    }
    old["query_bank.classes"] = torch.zeros(500, dtype=torch.int64)
    restored = build_model(iuq_config())
    restored.load_state_dict(old, strict=True)
    assert torch.equal(restored.inter_scene.bank.feats, model.inter_scene.bank.feats)
    assert restored.inter_scene.bank.num_filled == 18
    assert restored.inter_scene.bank.iters.eq(0).all()
    stripped = strip_checkpoint({"model": old})
    build_model(tiny_config()).load_state_dict(stripped["model"], strict=True)


def test_entries_older_than_max_age_are_not_sampled():
    bank = QueryBank(10, 3)
    bank.enqueue(_entries(3, start=0), iteration=5)
    bank.enqueue(_entries(2, start=10), iteration=9)
    sampled, ages = bank.sample_with_age(10, now=10, max_age=2)
    assert sorted(sampled.feats[:, 0].tolist()) == [10, 11] and ages.tolist() == [1, 1]
    assert len(bank.sample_with_age(10, now=10, max_age=-1)[0]) == 5
    assert len(bank.sample(10)) == 5


def test_batch_entry_cap_bounds_the_pairs_but_every_entry_enters_the_bank():
    torch.manual_seed(0)
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.MAX_BATCH_ENTRIES": 5}))
    with EventStorage() as storage:
        model(_two_image_batch())
        latest = storage.latest()
    assert latest["iuq/entries_evaluated"][0] == 5 and latest["iuq/entries_gathered"][0] == 18
    assert model.inter_scene.bank.num_filled == 18


def test_query_cap_evaluates_a_random_subset_of_the_queries():
    torch.manual_seed(0)
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.MAX_QUERIES": 2}))
    queries = Instances((0, 0))
    queries.mask_head_params = torch.randn(5, model.mask_head.num_params, requires_grad=True)
    queries.locations = torch.rand(5, 2) * 50
    queries.fpn_levels = torch.zeros(5, dtype=torch.int64)
    queries.im_inds = torch.tensor([0, 0, 0, 1, 1])
    images, gt = _prepared(model, _two_image_batch())
    feats = torch.randn(2, model.mask_branch.out_channels, 14, 16)
    with EventStorage() as storage:
        loss = model.inter_scene(feats, queries, gt, torch.tensor([0, 1]), 0)["loss_inter"]
        assert storage.latest()["iuq/queries_evaluated"][0] == 2
    loss.backward()
    reached = queries.mask_head_params.grad.abs().sum(dim=1) > 0
    assert reached.sum() == 2


@pytest.mark.parametrize("attached", [False, True])
def test_batch_entry_grad_reaches_the_mask_branch_only_when_asked(attached):
    torch.manual_seed(0)
    model = build_model(
        iuq_config(
            **{"MODEL.IUQ.INTER.BATCH_ENTRY_GRAD": attached, "MODEL.IUQ.INTER.NUM_NEGATIVES": 0}
        )
    )
    with EventStorage():
        losses = model(_two_image_batch())
    losses["loss_inter"].backward()
    branch = [p.grad for n, p in model.named_parameters() if n.startswith("mask_branch.tower")]
    reached = any(g is not None and g.abs().sum() > 0 for g in branch)
    assert reached == attached


def test_without_query_grad_the_loss_trains_only_the_representation():
    torch.manual_seed(0)
    model = build_model(
        iuq_config(
            **{
                "MODEL.IUQ.INTER.QUERY_GRAD": False,
                "MODEL.IUQ.INTER.BATCH_ENTRY_GRAD": True,
                "MODEL.IUQ.INTER.COORDS": "instance_centered",
            }
        )
    )
    with EventStorage() as storage:
        model(_two_image_batch())  # fill the bank: its entries must still not be sampled
        losses = model(_two_image_batch())
        latest = storage.latest()
        assert latest["iuq/inter_pairs"][0] > 0
        # The bank holds the first batch's entries, but none was sampled (they would carry
        # no gradient): sampled entries log their age.
        assert model.inter_scene.bank.num_filled > 0 and "iuq/bank_age_mean" not in latest
    losses["loss_inter"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[n] is None for n in grads if n.startswith("controller."))
    assert all(grads[n] is None for n in grads if "bbox_tower" in n)
    branch = [g for n, g in grads.items() if n.startswith("mask_branch.tower")]
    assert any(g is not None and g.abs().sum() > 0 for g in branch)


def test_query_grad_off_needs_the_entry_gradient():
    with pytest.raises(ValueError, match="BATCH_ENTRY_GRAD"):
        build_model(iuq_config(**{"MODEL.IUQ.INTER.QUERY_GRAD": False}))


def test_detached_output_bias_gets_no_inter_scene_gradient():
    torch.manual_seed(0)
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.DETACH_OUTPUT_BIAS": True}))
    queries = Instances((0, 0))
    queries.mask_head_params = torch.randn(3, model.mask_head.num_params, requires_grad=True)
    queries.locations = torch.tensor([[20.0, 20.0], [40.0, 30.0], [10.0, 50.0]])
    queries.fpn_levels = torch.tensor([0, 0, 1])
    queries.im_inds = torch.tensor([0, 0, 1])
    images, gt = _prepared(model, _two_image_batch())
    feats = torch.randn(2, model.mask_branch.out_channels, 14, 16)
    with EventStorage():
        loss = model.inter_scene(feats, queries, gt, torch.tensor([0, 1]), 0)["loss_inter"]
    loss.backward()
    grad = queries.mask_head_params.grad
    assert grad[:, -1].abs().max() == 0 and grad[:, :-1].abs().sum() > 0


def _queries_on_instances(model, gt_inds, locations, im_inds):
    queries = Instances((0, 0))
    queries.mask_head_params = torch.randn(
        len(gt_inds), model.mask_head.num_params, requires_grad=True
    )
    queries.locations = torch.tensor(locations, dtype=torch.float32)
    queries.fpn_levels = torch.tensor([0, 1, 0][: len(gt_inds)])
    queries.im_inds = torch.tensor(im_inds)
    queries.gt_inds = torch.tensor(gt_inds)
    return queries


def _dense_logits(model, feats, queries):
    """[Q, H, W] logits of each query's dynamic head on its own image's stride-8 features."""
    soi = model.mask_head.sizes_of_interest.float()[queries.fpn_levels]
    return reference_dense_mask_logits(
        feats,
        queries.mask_head_params,
        queries.im_inds,
        queries.locations,
        soi,
        8,
        model.mask_head.layer_shapes,
    )[:, 0]


def test_own_logit_is_the_dense_head_mean_over_the_sampled_own_cells():
    torch.manual_seed(0)
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.REFERENCE": "own"}))
    images, gt = _prepared(model, _two_image_batch())
    feats = torch.randn(2, model.mask_branch.out_channels, 14, 16)
    criterion = model.inter_scene
    local, instances = criterion.collect(feats, gt, torch.tensor([0, 1]))
    queries = _queries_on_instances(model, [1, 2, 0], [[80, 60], [20, 20], [30, 40]], [0, 1, 0])
    own, has_own = criterion.own_logits(queries, local, instances, 3)
    assert has_own.all()
    dense = _dense_logits(model, feats, queries)
    cells = ((local.positions - 4) / 8).long()
    for q, g in enumerate(queries.gt_inds.tolist()):
        mine = instances == g
        expected = dense[q, cells[mine, 1], cells[mine, 0]].mean()
        torch.testing.assert_close(own[q], expected)


def test_own_reference_makes_the_loss_blind_to_the_output_bias():
    losses, bias_grads = {}, {}
    for reference in ("zero", "own"):
        torch.manual_seed(0)
        model = build_model(
            iuq_config(
                **{
                    "MODEL.IUQ.INTER.REFERENCE": reference,
                    "MODEL.IUQ.INTER.MAX_QUERIES": -1,
                    # No bank sample: the first call's entries would be the second's negatives.
                    "MODEL.IUQ.INTER.NUM_NEGATIVES": 0,
                }
            )
        )
        _, gt = _prepared(model, _two_image_batch())
        torch.manual_seed(1)
        feats = torch.randn(2, model.mask_branch.out_channels, 14, 16)
        queries = _queries_on_instances(model, [1, 2, 0], [[80, 60], [20, 20], [30, 40]], [0, 1, 0])
        values = []
        for shift in (0.0, 3.0):
            shifted = queries[torch.arange(3)]
            shifted.mask_head_params = queries.mask_head_params + torch.nn.functional.pad(
                torch.full((3, 1), shift), (model.mask_head.num_params - 1, 0)
            )
            torch.manual_seed(2)  # the same cells sampled
            with EventStorage():
                values.append(
                    model.inter_scene(feats, shifted, gt, torch.tensor([0, 1]), 0)["loss_inter"]
                )
        losses[reference] = [v.item() for v in values]
        values[0].backward()
        bias_grads[reference] = queries.mask_head_params.grad[:, -1]
    assert losses["zero"][1] > 2 * losses["zero"][0]  # a higher output bias: more firing
    assert abs(losses["own"][1] - losses["own"][0]) < 1e-5 * losses["own"][0]
    assert bias_grads["zero"].abs().min() > 0
    assert bias_grads["own"].abs().max() < 1e-6


def test_reference_is_checked_at_build_time():
    with pytest.raises(ValueError, match="MODEL.IUQ.INTER.REFERENCE"):
        build_model(iuq_config(**{"MODEL.IUQ.INTER.REFERENCE": "mean"}))
    with pytest.raises(ValueError, match="PIXELS_PER_INSTANCE must be > 0"):
        build_model(
            iuq_config(
                **{"MODEL.IUQ.INTER.REFERENCE": "own", "MODEL.IUQ.INTER.PIXELS_PER_INSTANCE": 0}
            )
        )


def test_pair_mask_is_honoured_alike_by_the_reference_and_the_tiled_path():
    torch.manual_seed(0)
    shapes = [(8, 10), (8, 8), (1, 8)]
    params = torch.randn(4, 169, requires_grad=True)
    args = (
        params,
        torch.rand(4, 2) * 50,
        torch.full((4,), 64.0),
        torch.tensor([0, 0, 1, 2]),
        torch.randn(9, 8),
        torch.rand(9, 2) * 50,
        torch.tensor([1, 1, 2, 2, 0, 3, 3, 3, 1]),
        shapes,
    )
    mask = torch.rand(4, 9) > 0.4
    ref, ref_stats = inter_scene_focal_loss(*args, impl="reference", pair_mask=mask)
    (g_ref,) = torch.autograd.grad(ref, params)
    tiled, tiled_stats = inter_scene_focal_loss(*args, impl="tiled", pair_mask=mask, chunk_elems=24)
    (g_tiled,) = torch.autograd.grad(tiled, params)
    torch.testing.assert_close(tiled, ref)
    torch.testing.assert_close(g_tiled, g_ref)
    expected_pairs = ((args[3][:, None] != args[6][None, :]) & mask).sum()
    assert ref_stats.num_pairs == expected_pairs == tiled_stats.num_pairs
    # Masking every pair of one query zeroes its gradient.
    mask[1] = False
    loss, _ = inter_scene_focal_loss(*args, impl="tiled", pair_mask=mask)
    (g,) = torch.autograd.grad(loss, params)
    assert g[1].abs().max() == 0 and g[0].abs().max() > 0


def test_pairs_on_the_query_own_instance_are_left_out():
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.EXCLUDE_OWN_FOOTPRINT": True}))
    # Image 0 holds one instance over x 8..40, y 8..40: cell centres 12, 20, 28, 36 per axis.
    batch = [make_input(64, 64, [[8, 8, 40, 40]], [0], seed=0)]
    images, gt = _prepared(model, batch)
    queries = Instances((0, 0))
    queries.gt_inds = torch.tensor([0])
    queries.locations = torch.tensor([[20.0, 28.0]])
    positions = torch.tensor([[20.0, 20.0], [44.0, 20.0], [36.0, 36.0], [300.0, 20.0]])
    # "overlay": each entry at its own position.
    keep = model.inter_scene.off_own_footprint(queries, gt, queries.locations, positions, (8, 8))
    assert keep.tolist() == [[False, True, False, True]]
    # "instance_centered": the entry's offset from its instance's centre, moved to the query's
    # location (20, 28): an entry 16 px right of its centre lands on x 36 (inside), 24 px
    # right on x 44 (outside), 16 px above on y 12 (inside), 24 px above on y 4 (outside). On a
    # cell border it belongs to the cell on its right: x 40 is in the cell of centre 44
    # (outside), x 32 in that of centre 36 (inside).
    from_centre = torch.tensor(
        [[16.0, 0.0], [24.0, 0.0], [0.0, -16.0], [0.0, -24.0], [20.0, 0.0], [12.0, 0.0]]
    )
    keep = model.inter_scene.off_own_footprint(
        queries, gt, torch.zeros_like(queries.locations), from_centre, (8, 8)
    )
    assert keep.tolist() == [[False, True, False, True, True, False]]


def test_instance_centered_exclusion_scores_only_what_sticks_out_of_the_own_instance():
    """The relu(rel_x) head, placed on a wider look-alike of another image: only the entries
    that land off the query's own instance (read directly from its full-resolution mask) are
    scored."""
    model = build_model(
        iuq_config(
            **{
                "MODEL.IUQ.INTER.EXCLUDE_OWN_FOOTPRINT": True,
                "MODEL.IUQ.INTER.COORDS": "instance_centered",
                "MODEL.IUQ.INTER.NUM_NEGATIVES": 0,
                "MODEL.IUQ.INTER.PIXELS_PER_INSTANCE": 40,
            }
        )
    )
    queries = _rel_x_query(model)  # at (200, 40)
    queries.gt_inds = torch.tensor([0])
    c = model.mask_head.in_channels
    # The query's own instance spans x 180..220; the look-alike (centre (48, 56)) is 80 wide
    # and covers exactly 40 cell centres, so all of them are sampled once.
    batch = [
        make_input(96, 256, [[180, 24, 220, 56]], [0], seed=0),
        make_input(96, 128, [[8, 40, 88, 72]], [1], seed=1),
    ]
    _, gt = _prepared(model, batch)
    with EventStorage() as storage:
        loss = model.inter_scene(torch.zeros(2, c, 12, 32), queries, gt, torch.tensor([0, 1]), 0)
        pairs = storage.latest()["iuq/inter_pairs"][0]
    bank = model.inter_scene.bank
    foreign = bank.image_ids[: bank.num_filled] == 1
    pixels = bank.positions[: bank.num_filled][foreign]
    assert len(pixels) == 40
    landing = (pixels + torch.tensor([200.0 - 48.0, 40.0 - 56.0])).long()
    own_mask = gt[0].gt_bitmasks_full[0]
    off = own_mask[landing[:, 1], landing[:, 0]] == 0
    assert 0 < off.sum() < len(pixels)
    assert pairs == off.sum()
    rel_x = (48.0 - pixels[off, 0]) / 128
    p = torch.sigmoid(rel_x.clamp(min=0))
    expected = (0.75 * p**2 * -torch.log(1 - p)).mean()
    torch.testing.assert_close(loss["loss_inter"], expected)


def test_footprint_exclusion_needs_pair_normalisation():
    with pytest.raises(ValueError, match="EXCLUDE_OWN_FOOTPRINT"):
        build_model(
            iuq_config(
                **{
                    "MODEL.IUQ.INTER.EXCLUDE_OWN_FOOTPRINT": True,
                    "MODEL.IUQ.INTER.NORMALIZATION": "query_image",
                }
            )
        )


def test_gradient_balance_is_logged_without_touching_parameter_grads():
    torch.manual_seed(0)
    model = build_model(
        iuq_config(**{"MODEL.IUQ.GRADIENT_LOG_PERIOD": 1, "MODEL.IUQ.INTER.BATCH_ENTRY_GRAD": True})
    )
    with EventStorage() as storage:
        model(_two_image_batch())
        latest = storage.latest()
    assert all(p.grad is None for p in model.parameters())
    assert latest["iuq/grad_ctrl/loss_mask"][0] > 0 and latest["iuq/grad_ctrl/loss_inter"][0] > 0
    assert latest["iuq/grad_feat/loss_mask"][0] > 0 and latest["iuq/grad_feat/loss_inter"][0] > 0


def _hand_mean_sq_prob(params, rel, feats, shapes):
    """Per query, the mean squared probability over its valid pairs, by a loop over pairs."""
    weights, biases = parse_dynamic_params(params, shapes)
    out = []
    for q in range(params.shape[0]):
        values = []
        for n in range(feats.shape[0]):
            if rel[q][n] is None:
                continue
            x = torch.cat([rel[q][n], feats[n]])[None, :, None]
            one = [w[q : q + 1] for w in weights], [b[q : q + 1] for b in biases]
            values.append(torch.sigmoid(dynamic_mlp(x, *one)[0, 0, 0]) ** 2)
        out.append(torch.stack(values).mean() if values else params.new_zeros(()))
    return torch.stack(out)


def test_mean_squared_probability_by_hand():
    torch.manual_seed(0)
    shapes = [(8, 5), (8, 8), (1, 8)]
    params = torch.randn(3, sum(o * i + o for o, i in shapes))
    q_anchor = torch.tensor([[10.0, 20.0], [30.0, 5.0], [0.0, 0.0]])
    soi = torch.tensor([64.0, 128.0, 64.0])
    q_img = torch.tensor([0, 1, 7])
    feats = torch.randn(4, 3)
    p_anchor = torch.randn(4, 2) * 50
    p_img = torch.tensor([0, 1, 7, 7])
    mean_sq, stats = inter_scene_mean_sq_prob(
        params, q_anchor, soi, q_img, feats, p_anchor, p_img, shapes
    )
    rel = [
        [None if p_img[n] == q_img[q] else (q_anchor[q] - p_anchor[n]) / soi[q] for n in range(4)]
        for q in range(3)
    ]
    assert stats.num_pairs.item() == 3 + 3 + 2
    torch.testing.assert_close(mean_sq, _hand_mean_sq_prob(params, rel, feats, shapes))


def _dice_form_model(**overrides):
    return build_model(
        iuq_config(
            **{
                "MODEL.IUQ.INTER.LOSS_FORM": "dice",
                "MODEL.IUQ.INTER.NUM_NEGATIVES": 0,  # in-batch entries only: known by hand
                **overrides,
            }
        )
    )


def test_dice_form_puts_the_foreign_mass_into_each_query_dice_denominator():
    torch.manual_seed(0)
    model = _dice_form_model(**{"MODEL.IUQ.INTER.LOSS_WEIGHT": 2.0})
    _, gt = _prepared(model, _two_image_batch())
    feats = torch.randn(2, model.mask_branch.out_channels, 14, 16)
    queries = _queries_on_instances(model, [1, 2, 0], [[80, 60], [20, 20], [30, 40]], [0, 1, 0])
    inter, union = torch.tensor([3.0, 1.0, 0.5]), torch.tensor([9.0, 4.0, 6.0])
    torch.manual_seed(1)
    with EventStorage():
        loss = model.inter_scene(feats, queries, gt, torch.tensor([0, 1]), 0, (inter, union))
    torch.manual_seed(1)  # the same cells
    local, _ = model.inter_scene.collect(feats, gt, torch.tensor([0, 1]))
    soi = model.mask_head.sizes_of_interest.float()[queries.fpn_levels]
    rel = [
        [
            None
            if local.image_ids[n] == queries.im_inds[q]
            else (queries.locations[q] - local.positions[n]) / soi[q]
            for n in range(len(local))
        ]
        for q in range(3)
    ]
    mean_sq = _hand_mean_sq_prob(
        queries.mask_head_params, rel, local.feats, model.mask_head.layer_shapes
    )
    # 2 images' worth of 3 instances x 6 entries over 2 images; an entry is a stride-8 cell,
    # (8 / 4)^2 mask pixels.
    foreign = 2.0 * (18 / 2) * 4 * mean_sq
    expected = ((2 * inter / (union + 1e-5)) - 2 * inter / (union + foreign + 1e-5)).mean()
    torch.testing.assert_close(loss["loss_inter"], expected)


def test_dice_form_never_pushes_a_query_own_mask_down():
    """With a subset of the queries evaluated, loss_mask + loss_inter is still every query's
    dice (with foreign pixels for the evaluated ones): its gradient raises every numerator."""
    torch.manual_seed(0)
    model = _dice_form_model(**{"MODEL.IUQ.INTER.MAX_QUERIES": 2})
    _, gt = _prepared(model, _two_image_batch())
    feats = torch.randn(2, model.mask_branch.out_channels, 14, 16)
    queries = _queries_on_instances(model, [1, 2, 0], [[80, 60], [20, 20], [30, 40]], [0, 1, 0])
    queries.mask_head_params.data[:, -1] += 4.0  # firing everywhere: a large foreign mass
    inter = torch.tensor([3.0, 1.0, 0.5], requires_grad=True)
    union = torch.tensor([9.0, 4.0, 6.0], requires_grad=True)
    with EventStorage():
        loss_inter = model.inter_scene(feats, queries, gt, torch.tensor([0, 1]), 0, (inter, union))
    loss_mask = (1 - 2 * inter / (union + 1e-5)).mean()
    assert loss_inter["loss_inter"] > 0.01
    (loss_mask + loss_inter["loss_inter"]).backward()
    assert (inter.grad < 0).all() and (union.grad > 0).all()
    assert (queries.mask_head_params.grad.abs().sum(dim=1) > 0).sum() == 2


def test_dice_form_trains_and_is_checked_at_build_time():
    torch.manual_seed(0)
    model = _dice_form_model(**{"MODEL.IUQ.INTER.NUM_NEGATIVES": 4096})
    with EventStorage():
        model(_two_image_batch())
        losses = model(_two_image_batch())
    assert losses["loss_inter"] >= 0 and torch.isfinite(losses["loss_inter"])
    sum(losses.values()).backward()
    assert model.controller.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="MODEL.IUQ.INTER.LOSS_FORM"):
        build_model(iuq_config(**{"MODEL.IUQ.INTER.LOSS_FORM": "l1"}))
    with pytest.raises(ValueError, match="LOSS_FORM 'dice' takes the default REFERENCE"):
        _dice_form_model(**{"MODEL.IUQ.INTER.REFERENCE": "own"})


def _focal_to_zero(logits, alpha=0.25, gamma=2.0):
    # -log(1 - p) = softplus(logit), finite where p rounds to 1.
    return (1 - alpha) * logits.sigmoid() ** gamma * torch.nn.functional.softplus(logits)


def test_own_image_loss_scores_the_other_instances_of_the_query_image_by_hand():
    torch.manual_seed(0)
    model = build_model(iuq_config(**{"MODEL.IUQ.INTER.OWN_IMAGE_WEIGHT": 1.0}))
    images, gt = _prepared(model, _two_image_batch())
    feats = torch.randn(2, model.mask_branch.out_channels, 14, 16)
    criterion = model.inter_scene
    local, instances = criterion.collect(feats, gt, torch.tensor([7, 3]))
    # Image 0 holds instances 0 and 1, image 1 instance 2 (alone: its query has no pair).
    queries = _queries_on_instances(model, [1, 2, 0], [[80, 60], [20, 20], [30, 40]], [0, 1, 0])
    with EventStorage():
        loss = criterion.own_image_loss(queries, local, instances, gt)
    dense = _dense_logits(model, feats, queries)
    cells = ((local.positions - 4) / 8).long()
    terms = []
    for q, neighbour in ((0, 0), (2, 1)):
        mine = instances == neighbour
        terms.append(_focal_to_zero(dense[q, cells[mine, 1], cells[mine, 0]]))
    torch.testing.assert_close(loss, torch.cat(terms).mean())
    loss.backward()
    assert queries.mask_head_params.grad[1].abs().sum() == 0  # alone in its image


def test_own_image_loss_is_logged_only_when_weighted():
    torch.manual_seed(0)
    for weight, expected in ((0.0, False), (0.5, True)):
        model = build_model(iuq_config(**{"MODEL.IUQ.INTER.OWN_IMAGE_WEIGHT": weight}))
        with EventStorage() as storage:
            losses = model(_two_image_batch())
            assert ("loss_intra" in losses) == expected
            assert ("iuq/intra_pairs" in storage.latest()) == expected
        if expected:
            assert torch.isfinite(losses["loss_intra"])
    with pytest.raises(ValueError, match="OWN_IMAGE_WEIGHT"):
        build_model(iuq_config(**{"MODEL.IUQ.INTER.OWN_IMAGE_WEIGHT": -1.0}))
