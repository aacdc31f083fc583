"""The dense mask head's triton kernels run by Triton's interpreter on CPU tensors.

``TRITON_INTERPRET`` is read when the kernels are decorated, i.e. when
``iuq_d2.layers.triton_support`` is first imported, so this module needs its own pytest
process with the variable already set (``make test`` runs it so); the main run skips it.
"""

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

from iuq_d2.layers import triton_support  # noqa: E402
from tests.test_dense_mask_head import CASES, assert_same, make_case, run  # noqa: E402


def test_kernels_are_interpreted():
    assert triton_support.INTERPRET


@pytest.mark.parametrize("use_rel_coords", [True, False])
@pytest.mark.parametrize("feats_grad", [True, False])
def test_interpreted_triton_matches_reference(use_rel_coords, feats_grad):
    # 7 x 11 = 77 pixels: three BLOCK_N=32 blocks, the last partial; 4 target programs split
    # the queries of an image into groups in the feats kernel.
    case, kw = make_case(9, use_rel_coords=use_rel_coords, feats_grad=feats_grad)
    assert_same(run(case, kw, "triton"), run(case, kw, "reference"))


@pytest.mark.parametrize("case_name", ["one_query", "no_queries", "image_without_queries"])
def test_interpreted_triton_edge_cases(case_name):
    case, kw = make_case(**CASES[case_name])
    out = run(case, kw, "triton")
    assert_same(out, run(case, kw, "reference"))
    if case_name == "no_queries":
        assert out[0].shape == (0, 1, 7, 11)


def test_interpreted_triton_stride_and_large_coords():
    """Stride 4 and coordinates of a 100 x 136 map's far corner: coordinates computed in the
    kernel are the reference's fp32 values."""
    case, kw = make_case(3, num_images=2, height=3, width=5, stride=4, seed=5)
    case["locations"] = torch.tensor([[1084.0, 796.0], [2.0, 2.0], [542.0, 10.0]])
    assert_same(run(case, kw, "triton"), run(case, kw, "reference"))


def test_interpreted_triton_fp16_feats():
    """Half-precision feats are cast to fp32 on load: same as the reference on fp32 copies."""
    case, kw = make_case(4)
    half = dict(case, mask_feats=case["mask_feats"].detach().half().requires_grad_())
    as_fp32 = dict(case, mask_feats=half["mask_feats"].detach().float().requires_grad_())
    out, grads = run(half, kw, "triton")
    ref, ref_grads = run(as_fp32, kw, "reference")
    assert out.dtype == torch.float32 and grads[1].dtype == torch.float16
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grads[0], ref_grads[0])
    torch.testing.assert_close(grads[1].float(), ref_grads[1], atol=1e-3, rtol=1e-3)


def test_interpreted_triton_refuses_other_shapes():
    case, kw = make_case(2)
    kw = dict(kw, layer_shapes=[(8, 10), (1, 8)])
    with pytest.raises(NotImplementedError, match="tiled"):
        run(case, kw, "triton")
