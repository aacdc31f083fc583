"""Mixed precision on the CPU (bf16 autocast), where GPU users train with AMP: the hand-written
paths keep their fp32 arithmetic under autocast, and a whole IUQ-CondInst step (bank and
equivariance on) gives finite losses and gradients close to the fp32 step."""

import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from iuq_d2.layers import dynamic_layer_shapes
from iuq_d2.layers.dense_mask_head import dense_mask_logits
from iuq_d2.layers.dynamic_mlp import fold_dynamic_params
from iuq_d2.layers.inter_scene_loss import inter_scene_focal_loss

from .conftest import make_input, tiny_config
from .test_equivariance import _with_identity_views

SHAPES = dynamic_layer_shapes(10, 8, 3)
NUM_PARAMS = sum(o * i + o for o, i in SHAPES)


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _queries(num=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = (torch.randn(num, NUM_PARAMS, generator=g) * 0.3).requires_grad_()
    anchors = torch.rand(num, 2, generator=g) * 200
    soi = torch.full((num,), 64.0)
    return params, anchors, soi


def test_fold_dynamic_params_stays_in_fp32_under_autocast():
    params, anchors, soi = _queries()
    expected = fold_dynamic_params(params, anchors, soi, SHAPES, True, torch.float32)
    with bf16():
        got = fold_dynamic_params(params, anchors, soi, SHAPES, True, torch.float32)
    for a, b in zip(expected[0] + expected[1], got[0] + got[1]):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_tiled_inter_scene_loss_under_autocast_is_the_fp32_loss():
    params, anchors, soi = _queries()
    g = torch.Generator().manual_seed(1)
    args = (
        anchors,
        soi,
        torch.tensor([0, 0, 1, 1, 2, 2]),
        torch.randn(50, 8, generator=g),
        torch.rand(50, 2, generator=g) * 200,
        torch.randint(0, 4, (50,), generator=g),
        SHAPES,
    )
    loss, _ = inter_scene_focal_loss(params, *args, impl="tiled")
    (grad,) = torch.autograd.grad(loss, params)
    with bf16():
        loss_ac, _ = inter_scene_focal_loss(params, *args, impl="tiled")
    (grad_ac,) = torch.autograd.grad(loss_ac, params)
    assert loss_ac.dtype == torch.float32
    torch.testing.assert_close(loss_ac, loss, rtol=0, atol=0)
    torch.testing.assert_close(grad_ac, grad, rtol=0, atol=0)


def test_tiled_dense_mask_head_under_autocast_is_the_fp32_head():
    params, anchors, soi = _queries()
    feats = torch.randn(2, 8, 6, 7, generator=torch.Generator().manual_seed(2))
    feats.requires_grad_()
    args = (torch.tensor([0, 1, 1, 0, 1, 0]), anchors / 4, soi, 8, SHAPES)
    out = dense_mask_logits(feats, params, *args, impl="tiled")
    grads = torch.autograd.grad(out.sum(), [params, feats])
    with bf16():
        out_ac = dense_mask_logits(feats, params, *args, impl="tiled")
    grads_ac = torch.autograd.grad(out_ac.float().sum(), [params, feats])
    torch.testing.assert_close(out_ac.float(), out, rtol=0, atol=0)
    for a, b in zip(grads, grads_ac):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def _step(model, batch, autocast: bool):
    model = copy.deepcopy(model)
    torch.manual_seed(3)
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return losses, grads


@pytest.mark.parametrize("impl", ["reference", "tiled"])
def test_iuq_training_step_under_bf16_autocast(impl):
    """Losses within 5% of the fp32 step's, and the whole gradient within 45% (relative norm of
    the difference) with cosine 0.9: bf16 convolutions (8 significant bits) in this small
    from-scratch network leave about 30% on every loss's gradient, plain CondInst's too."""
    cfg = tiny_config(
        **{
            "MODEL.META_ARCHITECTURE": "IUQCondInst",
            "MODEL.IUQ.EQUI.ENABLED": True,
            "MODEL.IUQ.INTER.BANK_SIZE": 200,
            "MODEL.IUQ.INTER.PIXELS_PER_INSTANCE": 6,
            "MODEL.IUQ.INTER.IMPL": impl,
            "MODEL.CONDINST.MASK_HEAD.IMPL": impl,
            "MODEL.CONDINST.CHANNELS_LAST": False,
            "MODEL.CONDINST.MAX_PROPOSALS": 8,  # few queries: the interpreter runs it too
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    # 96 px, not 64: at 64 P6 is 1x1, and torch 2.14's CPU bf16 weight gradient of a stride-2
    # 3x3 conv on a 1x1 input (P7) is sometimes non-finite (22 of 200 tries, one thread), a
    # torch bug outside this project (AMP on the CPU is refused by load_config anyway).
    batch = _with_identity_views(
        [
            make_input(96, 96, [[10, 12, 60, 70], [50, 40, 90, 90]], [0, 2], seed=1),
            make_input(96, 96, [[5, 5, 30, 40]], [1], seed=2),
        ]
    )
    losses, grads = _step(model, batch, autocast=False)
    losses_ac, grads_ac = _step(model, batch, autocast=True)
    assert set(losses) == set(losses_ac) >= {"loss_mask", "loss_inter", "loss_equi_query"}
    for name, value in losses_ac.items():
        assert torch.isfinite(value), name
        torch.testing.assert_close(value.float(), losses[name], rtol=0.05, atol=1e-3)
    assert torch.isfinite(grads_ac).all()
    assert (grads_ac - grads).norm() <= 0.45 * grads.norm()
    assert torch.nn.functional.cosine_similarity(grads_ac, grads, dim=0) > 0.9
