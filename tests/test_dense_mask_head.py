"""The dense dynamic mask head implementations against today's head (and each other).

CPU-only CI runs the reference against ``DynamicMaskHead``, the tiled path, the dispatch and
the triton AOT compile; the interpreted triton kernels run in their own process
(tests/triton_interp); real CUDA checks skip without a GPU.
"""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

from iuq_d2.layers import aligned_bilinear, dynamic_layer_shapes, triton_support
from iuq_d2.layers.dense_mask_head import dense_mask_logits, resolve_impl

from .conftest import import_triton, requires_cuda, tiny_config
from .kernel_compile import compile_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOI = torch.tensor([64.0, 128.0, 256.0, 512.0, 1024.0])


def make_case(
    num_q,
    num_images=3,
    height=7,
    width=11,
    channels=8,
    stride=8,
    use_rel_coords=True,
    feats_grad=True,
    seed=0,
    dtype=torch.float32,
    device="cpu",
    im_inds=None,
):
    """Random features and queries at FCOS locations of any level (as the head sees them)."""
    g = torch.Generator().manual_seed(seed)
    shapes = dynamic_layer_shapes(channels + (2 if use_rel_coords else 0), 8, 3)
    num_p = sum(o * i + o for o, i in shapes)
    cells = torch.randint(0, height * width, (num_q,), generator=g)
    locations = torch.stack([cells % width, cells // width], dim=1) * stride + stride // 2
    if im_inds is None:
        im_inds = torch.randint(0, num_images, (num_q,), generator=g)
    case = dict(
        mask_feats=torch.randn(num_images, channels, height, width, generator=g, dtype=dtype),
        params=torch.randn(num_q, num_p, generator=g, dtype=dtype) * 0.5,
        im_inds=torch.as_tensor(im_inds, dtype=torch.int64),
        locations=locations.to(dtype),
        soi=SOI[torch.randint(0, 5, (num_q,), generator=g)].to(dtype),
        grad_out=torch.randn(num_q, 1, height, width, generator=g, dtype=dtype),
    )
    case = {k: v.to(device) for k, v in case.items()}
    case["params"].requires_grad_(True)
    case["mask_feats"].requires_grad_(feats_grad)
    return case, dict(stride=stride, layer_shapes=shapes, use_rel_coords=use_rel_coords)


def run(case, kw, impl, **extra):
    out = dense_mask_logits(
        case["mask_feats"],
        case["params"],
        case["im_inds"],
        case["locations"],
        case["soi"],
        kw["stride"],
        kw["layer_shapes"],
        use_rel_coords=kw["use_rel_coords"],
        impl=impl,
        **extra,
    )
    inputs = [case["params"]] + ([case["mask_feats"]] if case["mask_feats"].requires_grad else [])
    grads = torch.autograd.grad(out, inputs, case["grad_out"])
    return out, grads


def assert_same(a, b, atol=1e-5, rtol=1e-5):
    (out_a, grads_a), (out_b, grads_b) = a, b
    assert out_a.shape == out_b.shape and out_a.dtype == out_b.dtype
    torch.testing.assert_close(out_a, out_b, atol=atol, rtol=rtol)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        assert ga.dtype == gb.dtype
        torch.testing.assert_close(ga, gb, atol=atol, rtol=rtol)


CASES = {
    "several_images": dict(num_q=9),
    "one_query": dict(num_q=1),
    "no_queries": dict(num_q=0),
    "image_without_queries": dict(num_q=5, im_inds=[0, 2, 2, 0, 2]),
    "one_image": dict(num_q=4, num_images=1),
}


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("use_rel_coords", [True, False])
@pytest.mark.parametrize("feats_grad", [True, False])
def test_tiled_matches_reference(case_name, use_rel_coords, feats_grad):
    case, kw = make_case(**CASES[case_name], use_rel_coords=use_rel_coords, feats_grad=feats_grad)
    ref = run(case, kw, "reference")
    # 8 * 77 floats: one query per chunk; 8 * 77 * 2: chunks of 2, partial ones at image ends.
    for chunk_elems in (None, 8 * 77, 8 * 77 * 2, 1):
        assert_same(run(case, kw, "tiled", chunk_elems=chunk_elems), ref)


def test_tiled_matches_reference_at_feature_map_scale():
    """Coordinates up to ~1000 px, soi 64, sums over 13600 pixels: the tiled path (folded first
    layer, other summation order) is as close to the fp64 truth as the fp32 reference is."""
    case, kw = make_case(40, num_images=2, height=100, width=136, seed=3)
    as_fp64 = {
        k: (v.detach().double().requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in case.items()
    }
    exact_out, exact_grads = run(as_fp64, kw, "reference")
    ref_out, ref_grads = run(case, kw, "reference")
    out, grads = run(case, kw, "tiled")
    for new, ref, exact in zip([out, *grads], [ref_out, *ref_grads], [exact_out, *exact_grads]):
        ref_err = (ref.double() - exact).abs().max()
        assert (new.double() - exact).abs().max() <= 2 * ref_err + 1e-6 * exact.abs().max()


def test_no_queries_keeps_graph():
    case, kw = make_case(0)
    for impl in ("reference", "tiled"):
        out = dense_mask_logits(
            case["mask_feats"],
            case["params"],
            case["im_inds"],
            case["locations"],
            case["soi"],
            kw["stride"],
            kw["layer_shapes"],
            impl=impl,
        )
        assert out.shape == (0, 1, 7, 11) and out.requires_grad
        d_params, d_feats = torch.autograd.grad(out.sum(), [case["params"], case["mask_feats"]])
        assert d_params.shape == (0, 169) and torch.count_nonzero(d_feats) == 0


def test_tiled_gradcheck_fp64():
    for use_rel_coords in (True, False):
        case, kw = make_case(
            4, num_images=2, height=3, width=5, use_rel_coords=use_rel_coords, dtype=torch.float64
        )

        def fn(params, feats):
            return dense_mask_logits(
                feats,
                params,
                case["im_inds"],
                case["locations"],
                case["soi"],
                kw["stride"],
                kw["layer_shapes"],
                use_rel_coords=use_rel_coords,
                impl="tiled",
                chunk_elems=8 * 15 * 2,
            )

        assert torch.autograd.gradcheck(fn, (case["params"], case["mask_feats"]))


def test_tiled_saves_no_per_query_map():
    """What autograd keeps is the inputs and O(Q * P): no [Q, *, HW] tensor."""
    case, kw = make_case(12, num_images=2, height=10, width=10)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(case, kw, "tiled")
    assert saved and max(saved) <= max(2 * 8 * 100, 12 * 169)


@pytest.mark.parametrize("use_rel_coords", [True, False])
def test_mask_head_runs_the_chosen_impl(use_rel_coords):
    """``DynamicMaskHead`` with IMPL reference gives the reference bit for bit (before and after
    upsampling); its default (tiled on CPU) gives it to fp32 rounding."""
    cfg = tiny_config(
        **{
            "MODEL.CONDINST.MASK_HEAD.DISABLE_REL_COORDS": not use_rel_coords,
            "MODEL.CONDINST.MASK_HEAD.IMPL": "reference",
        }
    )
    head = build_model(cfg).mask_head
    stride = 8
    case, kw = make_case(
        10, num_images=2, height=9, width=12, stride=stride, use_rel_coords=use_rel_coords
    )
    assert kw["layer_shapes"] == head.layer_shapes
    g = torch.Generator().manual_seed(1)
    queries = Instances((0, 0))
    queries.mask_head_params = case["params"]
    queries.locations = case["locations"]
    queries.fpn_levels = torch.randint(0, 5, (10,), generator=g)
    queries.im_inds = case["im_inds"]
    soi = head.sizes_of_interest.float()[queries.fpn_levels]
    args = (case["mask_feats"], case["params"], case["im_inds"], case["locations"], soi, stride)
    ref = dense_mask_logits(*args, head.layer_shapes, use_rel_coords, impl="reference")
    factor = stride // head.mask_out_stride
    assert factor == 2
    assert torch.equal(aligned_bilinear(ref, factor), head(case["mask_feats"], stride, queries))
    head.mask_out_stride = stride  # factor 1: the pre-upsampling logits themselves
    assert torch.equal(ref, head(case["mask_feats"], stride, queries))
    head.impl = "auto"
    torch.testing.assert_close(head(case["mask_feats"], stride, queries), ref, atol=1e-5, rtol=1e-5)


def test_dispatch():
    case, kw = make_case(3)
    shapes = kw["layer_shapes"]
    assert resolve_impl("auto", case["mask_feats"], shapes, 10) == "tiled"
    assert resolve_impl("reference", case["mask_feats"], shapes, 10) == "reference"
    with pytest.raises(ValueError):
        resolve_impl("cuda", case["mask_feats"], shapes, 10)
    assert_same(run(case, kw, "auto"), run(case, kw, "tiled"), atol=0, rtol=0)


def test_auto_picks_triton_only_where_the_kernels_support_the_head(monkeypatch):
    """With CUDA and Triton, "auto" is triton for the kernels' 3-layer head and tiled for any
    other head (a stand-in for a CUDA tensor: only ``is_cuda`` and the shape are read)."""
    monkeypatch.setattr(triton_support, "triton_available", lambda: True)
    feats = SimpleNamespace(is_cuda=True, shape=(2, 8, 5, 5))
    for c_in in (8, 10):
        assert resolve_impl("auto", feats, dynamic_layer_shapes(c_in, 8, 3), c_in) == "triton"
        assert resolve_impl("triton", feats, dynamic_layer_shapes(c_in, 8, 2), c_in) == "triton"
        for num_layers in (1, 2, 4):
            shapes = dynamic_layer_shapes(c_in, 8, num_layers)
            assert resolve_impl("auto", feats, shapes, c_in) == "tiled"
        # The first layer must take the head's c_in inputs.
        assert resolve_impl("auto", feats, dynamic_layer_shapes(c_in + 2, 8, 3), c_in) == "tiled"
    shapes = dynamic_layer_shapes(10, 8, 3)
    assert resolve_impl("auto", SimpleNamespace(is_cuda=False), shapes, 10) == "tiled"
    monkeypatch.setattr(triton_support, "triton_available", lambda: False)
    assert resolve_impl("auto", feats, shapes, 10) == "tiled"


def test_bad_inputs():
    case, kw = make_case(3, num_images=2)
    with pytest.raises(ValueError, match="parameters"):
        dense_mask_logits(
            case["mask_feats"],
            case["params"][:, :-1],
            case["im_inds"],
            case["locations"],
            case["soi"],
            kw["stride"],
            kw["layer_shapes"],
            impl="tiled",
        )
    with pytest.raises(ValueError, match="im_inds"):
        dense_mask_logits(
            case["mask_feats"],
            case["params"],
            case["im_inds"] + 5,
            case["locations"],
            case["soi"],
            kw["stride"],
            kw["layer_shapes"],
            impl="tiled",
        )


def test_triton_refuses_cpu_tensors():
    import_triton()
    if triton_support.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1: CPU tensors are allowed")
    case, kw = make_case(2)
    with pytest.raises(ValueError, match="CUDA"):
        run(case, kw, "triton")


def test_package_works_without_triton():
    """``import triton`` failing leaves the module importable and the tiled path working."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from iuq_d2.layers.dense_mask_head import dense_mask_logits\n"
        "from iuq_d2.layers import triton_support as t\n"
        "assert not t.triton_available()\n"
        "p = torch.randn(2, 169, requires_grad=True)\n"
        "args = (torch.randn(2, 8, 3, 4), p, torch.tensor([0, 1]), torch.zeros(2, 2),\n"
        "        torch.full((2,), 64.0), 8, [(8, 10), (8, 8), (1, 8)])\n"
        "dense_mask_logits(*args).sum().backward()\n"
        "try:\n"
        "    dense_mask_logits(*args, impl='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'triton' in str(e)\n"
        "else:\n"
        "    raise AssertionError('triton impl ran without triton')\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- triton ahead-of-time compile


def _kernel_signatures():
    from iuq_d2.layers.dense_mask_head import triton_kernels as T

    common = {"params_ptr": "*bf16", "feats_ptr": "*bf16", "loc_ptr": "*fp32", "soi_ptr": "*fp32"}
    sizes = {"HW": "i32", "W": "i32", "P": "i32"}
    return {
        "forward": (
            T._forward_kernel,
            {**common, "img_ptr": "*i64", "out_ptr": "*fp32", **sizes},
        ),
        "params_grad": (
            T._params_grad_kernel,
            {
                **common,
                "img_ptr": "*i64",
                "gout_ptr": "*fp32",
                "dparams_ptr": "*fp32",
                "Q": "i32",
                **sizes,
            },
        ),
        "feats_grad": (
            T._feats_grad_kernel,
            {
                **common,
                "order_ptr": "*i64",
                "bounds_ptr": "*i64",
                "gout_ptr": "*fp32",
                "dfeats_ptr": "*fp32",
                "B": "i32",
                **sizes,
                "queries_per_group": "i32",
            },
        ),
    }


@pytest.mark.parametrize("capability", [80, 90])
@pytest.mark.parametrize("kernel", ["forward", "params_grad", "feats_grad"])
@pytest.mark.parametrize("use_rel_coords", [True, False])
def test_triton_kernels_compile_without_spills(capability, kernel, use_rel_coords):
    """PTX + cubin for sm_80/sm_90 without a GPU; ptxas -v must report no spills.

    Triton only fills ``CompiledKernel.n_spills`` when it loads the cubin on a device, so the
    spill count is read from ``ptxas -v`` on the generated PTX, with Triton's own ptxas.
    """
    import_triton()

    from iuq_d2.layers.dense_mask_head import triton_kernels as T

    if triton_support.INTERPRET:
        pytest.skip("interpreted kernels do not compile")
    fn, signature = _kernel_signatures()[kernel]
    consts = T._consts(hidden=8, channels=8, num_coords=2 if use_rel_coords else 0, stride=8)
    compiled, spills, log = compile_for(fn, signature, consts, capability, T.NUM_WARPS)
    assert compiled.asm["cubin"] and compiled.metadata.num_warps == T.NUM_WARPS
    assert spills and all(s == 0 for s in spills), log


# ---------------------------------------------------------------- real GPU


@requires_cuda
@pytest.mark.parametrize("use_rel_coords", [True, False])
def test_triton_matches_reference_on_gpu_fp32(use_rel_coords):
    import_triton()
    case, kw = make_case(
        60, num_images=4, height=100, width=136, use_rel_coords=use_rel_coords, device="cuda"
    )
    ref = run(case, kw, "reference")
    assert_same(run(case, kw, "triton"), ref, atol=1e-4, rtol=1e-4)
    assert_same(run(case, kw, "tiled"), ref, atol=1e-4, rtol=1e-4)
    c_in = 8 + (2 if use_rel_coords else 0)
    assert resolve_impl("auto", case["mask_feats"], kw["layer_shapes"], c_in) == "triton"


@requires_cuda
def test_triton_edge_cases_on_gpu():
    import_triton()
    for name in ("one_query", "no_queries", "image_without_queries"):
        case, kw = make_case(**CASES[name], device="cuda")
        assert_same(run(case, kw, "triton"), run(case, kw, "reference"))


@requires_cuda
def test_triton_bf16_inputs_on_gpu():
    """bf16 params/feats: the kernels compute in fp32, so compare with fp32 copies."""
    import_triton()
    case, kw = make_case(30, height=50, width=68, device="cuda")
    bf16 = {
        k: (v.detach().bfloat16().requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in case.items()
    }
    as_fp32 = {
        k: (v.detach().float().requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in bf16.items()
    }
    bf16["locations"], bf16["soi"] = as_fp32["locations"], as_fp32["soi"]
    out, grads = run(bf16, kw, "triton")
    ref, ref_grads = run(as_fp32, kw, "reference")
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r, atol=5e-2, rtol=2e-2)


@requires_cuda
def test_triton_is_deterministic():
    import_triton()
    case, kw = make_case(200, num_images=2, height=100, width=136, device="cuda")
    a, b = run(case, kw, "triton"), run(case, kw, "triton")
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
