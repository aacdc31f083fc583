"""The query bank and the inter-scene uniqueness loss."""

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from iuq_d2.engine import AtomicCheckpointer
from iuq_d2.layers import dynamic_mlp, parse_dynamic_params
from iuq_d2.layers.inter_scene_loss import inter_scene_focal_loss
from iuq_d2.modeling.iuq import BankEntries, QueryBank
from iuq_d2.strip_checkpoint import main as strip_main

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
    entries = model.inter_scene.collect(feats, gt, torch.tensor([42]))
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


def _two_image_batch():
    return [
        make_input(96, 128, [[10, 12, 60, 70], [50, 40, 120, 90]], [0, 2], seed=1),
        make_input(112, 80, [[5, 5, 30, 40]], [1], seed=2),
    ]


def test_training_step_fills_bank_and_logs():
    torch.manual_seed(0)
    model = build_model(iuq_config())
    with EventStorage() as storage:
        model(_two_image_batch())
        # Statistics read back from the device wait for the writer's iterations.
        assert "iuq/inter_frac_firing" not in storage.latest()
        assert "iuq/bank_fill" in storage.latest()
    with EventStorage(start_iter=19) as storage:
        model.inter_scene.bank = type(model.inter_scene.bank)(500, 8)
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
    names = {name for name, _ in model.inter_scene.bank.named_buffers()}
    assert names == {"feats", "positions", "offsets", "image_ids", "valid", "ptr"}
    for name in names:
        assert torch.equal(
            getattr(model.inter_scene.bank, name), getattr(restored.inter_scene.bank, name)
        ), name
    assert restored.inter_scene.bank.num_filled == 18

    strip_main([str(tmp_path / "model_x.pth"), str(tmp_path / "deploy.pth")])
    deploy = torch.load(tmp_path / "deploy.pth", weights_only=True)
    assert not any(k.startswith("inter_scene.") for k in deploy["model"])
    build_model(tiny_config()).load_state_dict(deploy["model"], strict=True)


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


def test_gradient_balance_is_logged_without_touching_parameter_grads():
    torch.manual_seed(0)
    model = build_model(iuq_config(**{"MODEL.IUQ.GRADIENT_LOG_PERIOD": 1}))
    with EventStorage() as storage:
        model(_two_image_batch())
        latest = storage.latest()
    assert all(p.grad is None for p in model.parameters())
    assert latest["iuq/grad_ctrl/loss_mask"][0] > 0 and latest["iuq/grad_ctrl/loss_inter"][0] > 0
    assert latest["iuq/grad_feat/loss_mask"][0] > 0
    assert latest["iuq/grad_feat/loss_inter"][0] == 0.0  # entries are constants: F gets nothing
