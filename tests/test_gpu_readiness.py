"""What a GPU run depends on, checked on the CPU: gradient clipping under AMP sees unscaled
gradients, a CPU config never starts NCCL workers, and Triton launches on the tensors' device."""

import copy
import os

import pytest
import torch

from iuq_d2.engine.config_loader import get_config
from iuq_d2.engine.trainer import Trainer

from .conftest import DEMO_CONFIG


def _adamw_amp_clip_config():
    cfg = get_config()
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.AMP.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    return cfg


def test_clipping_under_amp_sees_unscaled_gradients(monkeypatch):
    """GradScaler's step with the optimizer that Trainer builds: the norm the clipping measures
    is the true gradient's, not the loss scale times it."""
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        norm = clip(*args, **kwargs)
        seen.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    (model(x) ** 2).sum().backward()
    # detectron2 clips each parameter's gradient by its own norm.
    true_norms = sorted(float(p.grad.norm()) for p in model.parameters())
    model.zero_grad()

    optimizer = Trainer.build_optimizer(_adamw_amp_clip_config(), model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale((model(x) ** 2).sum()).backward()
    scaler.step(optimizer)
    assert sorted(seen) == pytest.approx(true_norms, rel=1e-5)


def test_amp_with_clipping_steps_like_fp32():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    reference = copy.deepcopy(model)
    x = torch.randn(8, 4)
    cfg = _adamw_amp_clip_config()
    optimizer = Trainer.build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaler.scale((model(x) ** 2).sum()).backward()
    scaler.step(optimizer)
    cfg.SOLVER.AMP.ENABLED = False
    plain = Trainer.build_optimizer(cfg, reference)
    (reference(x) ** 2).sum().backward()
    plain.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device, hidden", [("cpu", True), ("cuda", False)])
def test_cpu_config_workers_see_no_cuda(monkeypatch, device, hidden):
    """On a machine with CUDA, the workers of a CPU config must not get NCCL: launch() decides
    from torch.cuda.is_available() in the worker, which CUDA_VISIBLE_DEVICES="" makes False."""
    from iuq_d2.engine import entry

    seen = {}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        entry, "launch", lambda *a, **k: seen.update(env=os.environ.get("CUDA_VISIBLE_DEVICES"))
    )
    args = entry.build_argument_parser().parse_args(
        ["--config-file", DEMO_CONFIG, "--num-gpus", "2", "MODEL.DEVICE", device]
    )
    entry.run(args)
    assert seen["env"] == ("" if hidden else None)


def test_on_device_makes_the_tensors_device_current():
    from iuq_d2.layers.triton_support import on_device

    context = on_device(torch.device("cuda", 1))
    assert isinstance(context, torch.cuda.device) and context.idx == 1


def test_failed_first_use_check_warns_once_and_picks_tiled(monkeypatch, caplog):
    from types import SimpleNamespace

    from iuq_d2.layers import dynamic_layer_shapes, triton_support

    monkeypatch.setattr(triton_support, "_FIRST_USE", {})
    monkeypatch.setattr(triton_support, "_LOGGED", set())
    monkeypatch.setattr(triton_support, "triton_available", lambda: True)
    calls = []

    def failing():
        calls.append(1)
        raise RuntimeError("PTX .version 9.9 does not support .target sm_61")

    cuda = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), dtype=torch.float16)
    shapes = dynamic_layer_shapes(10, 8, 3)
    with caplog.at_level("INFO", logger=triton_support.__name__):
        for _ in range(3):
            assert triton_support.resolve_impl("auto", cuda, shapes, 10, "op", failing) == "tiled"
    assert calls == [1]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "sm_61" in warnings[0].getMessage()
    assert any("op on cuda:0 (torch.float16): tiled" in r.getMessage() for r in caplog.records)
    assert triton_support.resolve_impl("auto", cuda, shapes, 10, "op2", lambda: None) == "triton"
