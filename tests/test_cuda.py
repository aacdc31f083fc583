"""On a CUDA device (benchmarks/gpu.sh runs these with IUQ_REQUIRE_CUDA=1): both fused ops under
fp16 and bf16 autocast, launched while another device is current, on empty inputs, and whole
training steps with AMP: the demo model with the bank and equivariance, and R-50 at 800 px."""

import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from iuq_d2.engine.config_loader import load_config
from iuq_d2.layers import dynamic_layer_shapes
from iuq_d2.layers.dense_mask_head import dense_mask_logits
from iuq_d2.layers.inter_scene_loss import inter_scene_focal_loss

from .conftest import REPO, import_triton, make_input, requires_cuda, tiny_config

SHAPES = dynamic_layer_shapes(10, 8, 3)
NUM_PARAMS = sum(o * i + o for o, i in SHAPES)
IMPLS = ("reference", "tiled", "triton")


def _inter_case(num_q, num_n, device):
    g = torch.Generator().manual_seed(0)
    case = {
        "params": torch.randn(num_q, NUM_PARAMS, generator=g) * 0.3,
        "query_anchors": torch.rand(num_q, 2, generator=g) * 300,
        "query_soi": torch.full((num_q,), 64.0),
        "query_images": torch.randint(0, 4, (num_q,), generator=g),
        "pixel_feats": torch.randn(num_n, 8, generator=g),
        "pixel_anchors": torch.rand(num_n, 2, generator=g) * 300,
        "pixel_images": torch.randint(0, 8, (num_n,), generator=g),
    }
    case = {k: v.to(device) for k, v in case.items()}
    case["params"].requires_grad_()
    return case


def _inter(case, impl):
    loss, _ = inter_scene_focal_loss(**case, layer_shapes=SHAPES, impl=impl)
    (grad,) = torch.autograd.grad(loss, case["params"]) if loss.requires_grad else (None,)
    return loss, grad


def _dense_case(num_q, device, height=40, width=56):
    g = torch.Generator().manual_seed(0)
    case = {
        "mask_feats": torch.randn(2, 8, height, width, generator=g),
        "params": torch.randn(num_q, NUM_PARAMS, generator=g) * 0.3,
        "im_inds": torch.randint(0, 2, (num_q,), generator=g),
        "locations": torch.rand(num_q, 2, generator=g) * 8 * width,
        "soi": torch.full((num_q,), 64.0),
    }
    case = {k: v.to(device) for k, v in case.items()}
    case["mask_feats"].requires_grad_()
    case["params"].requires_grad_()
    return case


def _dense(case, impl):
    out = dense_mask_logits(**case, stride=8, layer_shapes=SHAPES, impl=impl)
    grads = torch.autograd.grad(out.float().sum(), [case["params"], case["mask_feats"]])
    return out, grads


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", IMPLS)
def test_both_ops_under_autocast(dtype, impl):
    """Under autocast each path stays within 16-bit rounding of the fp32 reference (the fused
    paths fold and accumulate in fp32, so they stay far closer than that)."""
    import_triton()
    inter = _inter_case(60, 3000, "cuda")
    dense = _dense_case(40, "cuda")
    ref_loss, ref_grad = _inter(inter, "reference")
    ref_out, ref_grads = _dense(dense, "reference")
    with torch.autocast("cuda", dtype=dtype):
        loss, grad = _inter(inter, impl)
        out, grads = _dense(dense, impl)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.float(), ref_loss, rtol=2e-2, atol=1e-5)
    scale = ref_grad.abs().max()
    assert (grad.float() - ref_grad).abs().max() <= 2e-2 * scale
    assert (out.float() - ref_out).abs().max() <= 2e-2 * (1 + ref_out.abs().max())
    for g, r in zip(grads, ref_grads):
        assert (g.float() - r).abs().max() <= 2e-2 * (1 + r.abs().max())


@requires_cuda
def test_kernels_launch_on_the_tensors_device_not_the_current_one():
    import_triton()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices: tensors on cuda:1 while cuda:0 is current")
    torch.cuda.set_device(0)
    for impl in ("tiled", "triton"):
        inter_1 = _inter_case(20, 500, "cuda:1")
        loss, grad = _inter(inter_1, impl)
        ref_loss, ref_grad = _inter({k: v.detach().cpu() for k, v in inter_1.items()}, "tiled")
        torch.testing.assert_close(loss.cpu(), ref_loss, rtol=1e-4, atol=1e-6)
        dense_1 = _dense_case(10, "cuda:1")
        out, _ = _dense(dense_1, impl)
        assert out.device == torch.device("cuda", 1)
        assert torch.cuda.current_device() == 0


@requires_cuda
@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs(impl):
    import_triton()
    for num_q, num_n in ((0, 100), (10, 0), (0, 0)):
        loss, grad = _inter(_inter_case(num_q, num_n, "cuda"), impl)
        assert float(loss) == 0.0 and (grad is None or float(grad.abs().sum()) == 0.0)
    out, grads = _dense(_dense_case(0, "cuda"), impl)
    assert out.shape == (0, 1, 40, 56) and float(grads[1].abs().sum()) == 0.0


def _amp_step(model, batch):
    scaler = torch.amp.GradScaler("cuda")
    with EventStorage(), torch.autocast("cuda", dtype=torch.float16):
        losses = model(batch)
    scaler.scale(sum(losses.values())).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return losses, grads


@requires_cuda
@pytest.mark.parametrize("impl", ["tiled", "auto"])
def test_demo_iuq_training_step_with_amp(impl):
    cfg = tiny_config(
        **{
            "MODEL.DEVICE": "cuda",
            "MODEL.META_ARCHITECTURE": "IUQCondInst",
            "MODEL.IUQ.EQUI.ENABLED": True,
            "MODEL.IUQ.INTER.IMPL": impl,
            "MODEL.CONDINST.MASK_HEAD.IMPL": impl,
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = [
        make_input(96, 96, [[10, 12, 60, 70], [50, 40, 90, 90]], [0, 2], seed=1),
        make_input(96, 96, [[5, 5, 30, 40]], [1], seed=2),
    ]
    for x in batch:
        x["view"] = {
            "image": x["image"].clone(),
            "instances": copy.deepcopy(x["instances"]),
            "affine": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        }
    for _ in range(2):  # the second step samples the bank the first one filled
        losses, grads = _amp_step(model, batch)
        assert {"loss_inter", "loss_equi_query"} <= set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        assert grads and all(torch.isfinite(g).all() for g in grads)
        model.zero_grad()


@requires_cuda
def test_r50_iuq_training_step_at_800_px_with_amp():
    cfg = load_config(
        f"{REPO}/configs/IUQ-CondInst/MS_R_50_1x.yaml",
        ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cuda", "MODEL.FCOS.NUM_CLASSES", "4"]
        + ["DATASETS.TRAIN", "('shapes_train',)", "DATASETS.TEST", "('shapes_val',)"],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = [
        make_input(800, 1088, [[100, 120, 600, 700], [500, 400, 900, 790]], [0, 2], seed=1),
        make_input(800, 1088, [[50, 50, 300, 400]], [1], seed=2),
    ]
    losses, grads = _amp_step(model, batch)
    assert all(torch.isfinite(v) for v in losses.values()) and "loss_inter" in losses
    assert grads and all(torch.isfinite(g).all() for g in grads)
