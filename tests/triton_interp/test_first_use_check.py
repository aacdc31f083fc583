"""The first-use checks of the Triton paths, run for real in the interpreter on CPU tensors:
they pass where the kernels are right and fail, naming the op, where a kernel is wrong."""

import os

import pytest

from tests.conftest import import_triton

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "needs TRITON_INTERPRET=1 set before pytest starts (own process, see Makefile)",
        allow_module_level=True,
    )
import_triton()

import torch  # noqa: E402

from iuq_d2.layers import (  # noqa: E402
    dense_mask_head,
    dynamic_layer_shapes,  # noqa: E402
    inter_scene_loss,
)
from iuq_d2.layers.inter_scene_loss import triton_kernels  # noqa: E402

SHAPES = dynamic_layer_shapes(10, 8, 3)
PARAMS = torch.zeros(3, sum(o * i + o for o, i in SHAPES))


def test_dense_head_check_passes():
    check = dense_mask_head._check_triton_dense_head(
        torch.zeros(1, 8, 4, 4), PARAMS, 8, SHAPES, True
    )
    assert check() is None


@pytest.mark.parametrize("normalization", ["pairs", "query_image"])
def test_inter_scene_check_passes(normalization):
    check = inter_scene_loss._check_triton_inter_scene(
        PARAMS, torch.zeros(5, 8), SHAPES, True, normalization
    )
    assert check() is None


def test_inter_scene_check_names_a_wrong_kernel(monkeypatch):
    launch = triton_kernels.launch_inter_scene_kernel

    def off_by_a_little(*args):
        loss, fire, d_pack = launch(*args)
        return loss * 1.01, fire, d_pack

    monkeypatch.setattr(triton_kernels, "launch_inter_scene_kernel", off_by_a_little)
    check = inter_scene_loss._check_triton_inter_scene(
        PARAMS, torch.zeros(5, 8), SHAPES, True, "pairs"
    )
    reason = check()
    assert reason is not None and reason.startswith("inter-scene loss output 0")


def test_kernels_launch_on_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: every launch is wrapped in the tensors'."""
    from iuq_d2.layers.dense_mask_head import triton_kernels as dense_kernels

    seen = []

    def recording(device):
        seen.append(device)
        return torch.autocast("cpu", enabled=False)  # any context manager

    monkeypatch.setattr(triton_kernels, "on_device", recording)
    monkeypatch.setattr(dense_kernels, "on_device", recording)
    inter_scene_loss._check_triton_inter_scene(PARAMS, torch.zeros(5, 8), SHAPES, True, "pairs")()
    dense_mask_head._check_triton_dense_head(torch.zeros(1, 8, 4, 4), PARAMS, 8, SHAPES, True)()
    # The inter-scene kernel once; the dense head's forward and backward.
    assert seen == [torch.device("cpu")] * 3


def test_iuq_training_step_under_bf16_autocast_on_the_triton_path():
    """The whole-step mixed-precision test of tests/test_mixed_precision.py with both ops on
    their Triton kernels (interpreted)."""
    from tests.test_mixed_precision import test_iuq_training_step_under_bf16_autocast

    test_iuq_training_step_under_bf16_autocast("triton")
