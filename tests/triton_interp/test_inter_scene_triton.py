"""The triton kernels run by Triton's interpreter on CPU tensors, against the reference.

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
from tests.test_inter_scene_ops import assert_same, make_case, run  # noqa: E402


def test_kernels_are_interpreted():
    assert triton_support.INTERPRET


@pytest.mark.parametrize("normalization", ["pairs", "query_image"])
@pytest.mark.parametrize("use_rel_coords", [True, False])
@pytest.mark.parametrize("feats_grad", [True, False])
def test_interpreted_triton_matches_reference(normalization, use_rel_coords, feats_grad):
    """``feats_grad``: entry features that require grad stay constants (``run`` checks it)."""
    # 45 entries: two BLOCK_N=32 blocks, the second partial; 4 programs split the queries.
    case, shapes = make_case(6, 45, use_rel_coords=use_rel_coords, feats_grad=feats_grad)
    kw = dict(use_rel_coords=use_rel_coords, normalization=normalization)
    assert_same(run(case, shapes, "triton", **kw), run(case, shapes, "reference", **kw))


@pytest.mark.parametrize("case", ["no_valid_pair", "one_query", "no_entries", "gamma"])
def test_interpreted_triton_edge_cases(case):
    kw = {}
    if case == "no_valid_pair":
        data, shapes = make_case(3, 10, same_image=True)
    elif case == "one_query":
        data, shapes = make_case(1, 64)
    elif case == "no_entries":
        data, shapes = make_case(4, 0)
    else:
        data, shapes = make_case(3, 20)
        kw = dict(gamma=1.5, alpha=0.5)
    ref = run(data, shapes, "reference", **kw)
    out = run(data, shapes, "triton", **kw)
    assert_same(out, ref)
    if case in ("no_valid_pair", "no_entries"):
        assert out[0].item() == 0.0


def test_interpreted_triton_fp16_feats():
    """Half-precision feats are cast to fp32 on load: same as the reference on fp32 copies
    (and, like any entry features, they get no gradient: ``run`` checks it)."""
    data, shapes = make_case(4, 40)
    half = dict(data, pixel_feats=data["pixel_feats"].detach().half().requires_grad_())
    as_fp32 = dict(data, pixel_feats=half["pixel_feats"].detach().float().requires_grad_())
    loss, grads, _ = run(half, shapes, "triton")
    ref_loss, ref_grads, _ = run(as_fp32, shapes, "reference")
    assert half["pixel_feats"].requires_grad and len(grads) == 1
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grads[0], ref_grads[0])
