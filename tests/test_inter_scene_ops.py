"""The inter-scene loss implementations against the PyTorch reference (and each other).

CPU-only CI runs the tiled path, the weights, the dispatch and the triton AOT compile; the
interpreted triton kernels run in their own process (tests/triton_interp); real CUDA checks
skip without a GPU.
"""

import os
import subprocess
import sys

import pytest
import torch

from iuq_d2.layers.inter_scene_loss import (
    inter_scene_focal_loss,
    inter_scene_weights,
    reference_inter_scene_focal_loss,
    resolve_impl,
)

from .conftest import import_triton, requires_cuda
from .kernel_compile import compile_for

SHAPES = [(8, 10), (8, 8), (1, 8)]
SHAPES_NO_COORDS = [(8, 8), (8, 8), (1, 8)]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_case(
    num_q,
    num_n,
    num_images=3,
    use_rel_coords=True,
    feats_grad=True,
    seed=0,
    dtype=torch.float32,
    device="cpu",
    same_image=False,
):
    """Random queries and entries; ``same_image`` puts everything in image 0 (no valid pair).
    ``feats_grad`` makes the entry features require grad: the loss must still treat them as
    constants (``run`` checks that they get no gradient)."""
    g = torch.Generator().manual_seed(seed)
    shapes = SHAPES if use_rel_coords else SHAPES_NO_COORDS
    num_p = sum(o * i + o for o, i in shapes)
    high = 1 if same_image else num_images
    case = dict(
        params=torch.randn(num_q, num_p, generator=g, dtype=dtype),
        query_anchors=torch.randn(num_q, 2, generator=g, dtype=dtype) * 50,
        query_soi=torch.rand(num_q, generator=g, dtype=dtype) * 100 + 16,
        query_images=torch.randint(0, high, (num_q,), generator=g),
        pixel_feats=torch.randn(num_n, 8, generator=g, dtype=dtype),
        pixel_anchors=torch.randn(num_n, 2, generator=g, dtype=dtype) * 50,
        pixel_images=torch.randint(0, high + 1 if not same_image else 1, (num_n,), generator=g),
    )
    case = {k: v.to(device) for k, v in case.items()}
    case["params"].requires_grad_(True)
    case["pixel_feats"].requires_grad_(feats_grad)
    return case, shapes


def positional_args(case):
    """The case's tensors in the order of the loss's positional arguments."""
    names = ("params", "query_anchors", "query_soi", "query_images")
    return [case[k] for k in names + ("pixel_feats", "pixel_anchors", "pixel_images")]


def run(case, shapes, impl, **kw):
    """(loss, (d loss / d params,), stats); fails if the entry features get a gradient."""
    loss, stats = inter_scene_focal_loss(
        case["params"],
        case["query_anchors"],
        case["query_soi"],
        case["query_images"],
        case["pixel_feats"],
        case["pixel_anchors"],
        case["pixel_images"],
        shapes,
        impl=impl,
        **kw,
    )
    feats = case["pixel_feats"]
    if feats.requires_grad:  # entries are constants
        (g_feats,) = torch.autograd.grad(loss, [feats], retain_graph=True, allow_unused=True)
        assert g_feats is None, "the entry features got a gradient"
    grads = torch.autograd.grad(loss, [case["params"]], allow_unused=False)
    return loss, grads, stats


def assert_same(a, b, atol=1e-6, rtol=1e-5):
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, atol=atol, rtol=rtol)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, atol=atol, rtol=rtol)
    assert stats_a.num_pairs.item() == stats_b.num_pairs.item()
    torch.testing.assert_close(stats_a.frac_firing, stats_b.frac_firing)


CASES = {
    "random": dict(num_q=6, num_n=53),
    "no_valid_pair": dict(num_q=4, num_n=20, same_image=True),
    "one_query": dict(num_q=1, num_n=41),
    "no_entries": dict(num_q=5, num_n=0),
    "no_queries": dict(num_q=0, num_n=9),
}


@pytest.mark.parametrize("case_name", list(CASES))
@pytest.mark.parametrize("normalization", ["pairs", "query_image"])
@pytest.mark.parametrize("use_rel_coords", [True, False])
@pytest.mark.parametrize("feats_grad", [True, False])
def test_tiled_matches_reference(case_name, normalization, use_rel_coords, feats_grad):
    case, shapes = make_case(
        **CASES[case_name], use_rel_coords=use_rel_coords, feats_grad=feats_grad
    )
    ref = run(case, shapes, "reference", use_rel_coords=use_rel_coords, normalization=normalization)
    # 8 * 6 * 7 floats per chunk: T = 7 entries, so 53 entries end on a partial chunk.
    for chunk_elems in (None, 8 * 6 * 7, 1):
        tiled = run(
            case,
            shapes,
            "tiled",
            use_rel_coords=use_rel_coords,
            normalization=normalization,
            chunk_elems=chunk_elems,
        )
        assert_same(tiled, ref)
    if case_name in ("no_valid_pair", "no_entries", "no_queries"):
        assert ref[0].item() == 0.0 and tiled[0].item() == 0.0


def test_default_call_unchanged():
    """The positional call of the original API: pairs normalisation, auto impl."""
    case, shapes = make_case(7, 64)
    args = positional_args(case)
    loss, stats = inter_scene_focal_loss(*args, shapes)
    ref, ref_stats = reference_inter_scene_focal_loss(*args, shapes)
    torch.testing.assert_close(loss, ref)
    assert loss.dtype == torch.float32 and stats.num_pairs.dtype == torch.int64


def test_query_image_normalisation_by_hand():
    """Mean over each other image's entries, then over those images, then over queries."""
    case, shapes = make_case(5, 30, num_images=3, feats_grad=False)
    loss, _ = reference_inter_scene_focal_loss(
        *[
            case[k]
            for k in (
                "params",
                "query_anchors",
                "query_soi",
                "query_images",
                "pixel_feats",
                "pixel_anchors",
                "pixel_images",
            )
        ],
        shapes,
        normalization="query_image",
    )
    # Per-pair focal losses from the reference with every pair weighted 1.
    num_q, num_n = 5, 30
    per_pair = torch.zeros(num_q, num_n)
    for q in range(num_q):
        for n in range(num_n):
            sub = {k: case[k][q : q + 1] for k in ("params", "query_anchors", "query_soi")}
            pair_loss, _ = reference_inter_scene_focal_loss(
                sub["params"],
                sub["query_anchors"],
                sub["query_soi"],
                torch.tensor([-1]),
                case["pixel_feats"][n : n + 1],
                case["pixel_anchors"][n : n + 1],
                case["pixel_images"][n : n + 1],
                shapes,
            )
            per_pair[q, n] = pair_loss
    q_img, p_img = case["query_images"], case["pixel_images"]
    per_query = []
    for q in range(num_q):
        others = [i for i in p_img.unique().tolist() if i != q_img[q].item()]
        if others:
            per_query.append(torch.stack([per_pair[q, p_img == i].mean() for i in others]).mean())
    expected = torch.stack(per_query).mean()
    torch.testing.assert_close(loss, expected)


def test_weights_are_linear_in_sizes():
    qw, pw, num_pairs = inter_scene_weights(
        torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 3, 3, 3]), "query_image"
    )
    # Images with entries: 0 (1), 1 (2), 3 (3). Query 2 (image 2) sees all three.
    torch.testing.assert_close(pw, torch.tensor([1.0, 0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]))
    torch.testing.assert_close(qw, torch.tensor([1 / 8, 1 / 8, 1 / 8, 1 / 12]))
    assert num_pairs.item() == 4 * 6 - (2 * 1 + 1 * 2)
    with pytest.raises(ValueError):
        inter_scene_weights(torch.tensor([0]), torch.tensor([1]), "per_image")


def test_tiled_gradcheck_fp64():
    """The parameters' gradient; the entry features are constants of the loss."""
    case, shapes = make_case(3, 11, dtype=torch.float64, feats_grad=False)
    for normalization in ("pairs", "query_image"):

        def fn(params):
            loss, _ = inter_scene_focal_loss(
                params,
                case["query_anchors"],
                case["query_soi"],
                case["query_images"],
                case["pixel_feats"],
                case["pixel_anchors"],
                case["pixel_images"],
                shapes,
                impl="tiled",
                normalization=normalization,
                chunk_elems=8 * 3 * 4,
            )
            return loss

        assert torch.autograd.gradcheck(fn, (case["params"],))


def test_tiled_function_saves_no_pair_tensor():
    """What autograd keeps is O(Q * P + N * C): no [Q, hidden, N] survives the forward."""
    case, shapes = make_case(6, 200)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(case, shapes, "tiled")
    assert saved and max(saved) <= max(6 * 169, 200 * 10)


def test_auto_picks_tiled_on_cpu():
    assert resolve_impl("auto", torch.zeros(1), SHAPES, 10) == "tiled"
    with pytest.raises(ValueError):
        resolve_impl("cuda", torch.zeros(1), SHAPES, 10)


def test_triton_refuses_cpu_tensors():
    import_triton()
    from iuq_d2.layers import triton_support

    if triton_support.INTERPRET:
        pytest.skip("TRITON_INTERPRET=1: CPU tensors are allowed")
    case, shapes = make_case(2, 5)
    with pytest.raises(ValueError, match="CUDA"):
        run(case, shapes, "triton")


def test_package_works_without_triton():
    """``import triton`` failing leaves the package importable and the tiled path working."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from iuq_d2.layers.inter_scene_loss import inter_scene_focal_loss\n"
        "from iuq_d2.layers import triton_support as t\n"
        "assert not t.triton_available()\n"
        "p = torch.randn(2, 169, requires_grad=True)\n"
        "args = (torch.zeros(2, 2), torch.ones(2), torch.tensor([0, 1]), torch.randn(4, 8),\n"
        "        torch.zeros(4, 2), torch.tensor([0, 1, 2, 2]), [(8, 10), (8, 8), (1, 8)])\n"
        "loss, _ = inter_scene_focal_loss(p, *args)\n"
        "loss.backward()\n"
        "try:\n"
        "    inter_scene_focal_loss(p, *args, impl='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'triton' in str(e)\n"
        "else:\n"
        "    raise AssertionError('triton impl ran without triton')\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- triton ahead-of-time compile


def _kernel_signature():
    return {
        "pack_ptr": "*fp32",
        "anchors_ptr": "*fp32",
        "feats_ptr": "*bf16",
        "q_img_ptr": "*i64",
        "p_img_ptr": "*i64",
        "qw_ptr": "*fp32",
        "pw_ptr": "*fp32",
        "loss_ptr": "*fp32",
        "fire_ptr": "*i32",
        "dpack_ptr": "*fp32",
        "Q": "i32",
        "N": "i32",
        "PK": "i32",
        "alpha": "fp32",
    }


@pytest.mark.parametrize("capability", [80, 90])
def test_triton_kernel_compiles_without_spills(capability):
    """PTX + cubin for sm_80/sm_90 without a GPU; ptxas -v must report no spills.

    Triton only fills ``CompiledKernel.n_spills`` when it loads the cubin on a device, so the
    spill count is read from ``ptxas -v`` on the generated PTX, with Triton's own ptxas.
    """
    import_triton()

    from iuq_d2.layers import triton_support
    from iuq_d2.layers.inter_scene_loss import triton_kernels as T

    if triton_support.INTERPRET:
        pytest.skip("interpreted kernels do not compile")
    consts = dict(H=8, CIN=10, C=8, NC=2, HP=8, CINP=16, GAMMA=2.0, BLOCK_N=T.BLOCK_N)
    compiled, spills, log = compile_for(
        T._params_kernel, _kernel_signature(), consts, capability, T.NUM_WARPS
    )
    assert compiled.asm["cubin"] and compiled.metadata.num_warps == T.NUM_WARPS
    assert spills and all(s == 0 for s in spills), log


# ---------------------------------------------------------------- low-precision gradients


def assert_close_to_scale(actual, expected, rel=1e-2, rtol=2e-2):
    """``|actual - expected| <= rel * scale + rtol * |expected|`` elementwise, ``scale`` the
    largest |expected| of the element's row (one query's gradient; the whole tensor's for an
    all-zero row).

    Gradients of the inter-scene loss are small (1 / #pairs) and their rows differ in scale by
    hundreds: a fixed ``atol`` above a row's scale lets that row, or the whole gradient, be
    zero. Here every row's largest element must match to ``rel + rtol`` (< 1) of itself, so
    a zero or vanishing row fails.
    """
    assert rel + rtol < 1
    expected = expected.detach().float()
    actual = actual.detach().float()
    whole = expected.abs().max()
    assert whole > 0, "the reference gradient is all zero: nothing to compare"
    rows = expected.reshape(expected.shape[0], -1).abs().amax(dim=1)
    scale = torch.where(rows > 0, rows, whole).reshape(-1, *[1] * (expected.dim() - 1))
    torch.testing.assert_close(actual / scale, expected / scale, atol=rel, rtol=rtol)


def _low_precision_case(dtype, device="cpu"):
    """The case in ``dtype`` (params and entry feats) and its exact fp32 copy."""
    case, shapes = make_case(20, 300, device=device)
    low = {
        k: (v.detach().to(dtype).requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in case.items()
    }
    as_fp32 = {
        k: (v.detach().float().requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in low.items()
    }
    return low, as_fp32, shapes


def test_bf16_inputs_tiled():
    """bf16 params/feats: the tiled path computes in fp32, so compare with the fp32 reference;
    the gradient, rounded back to bf16, to its own scale."""
    bf16, as_fp32, shapes = _low_precision_case(torch.bfloat16)
    loss, grads, _ = run(bf16, shapes, "tiled")
    ref_loss, ref_grads, _ = run(as_fp32, shapes, "reference")
    assert grads[0].dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-3)
    assert_close_to_scale(grads[0], ref_grads[0])


def test_scaled_tolerance_rejects_a_zero_gradient():
    """The bf16 tests' case: a fixed atol=1e-2 (their former check) passed a gradient with
    every small query's row zeroed, and an all-zero feats gradient before the entries became
    constants; the row-scaled tolerance passes bf16 rounding and nothing less."""
    _, as_fp32, shapes = _low_precision_case(torch.bfloat16)
    (ref,) = run(as_fp32, shapes, "reference")[1]
    small = ref.abs().amax(dim=1) < 1e-2
    assert small.any() and not small.all()
    mutant = ref.clone()
    mutant[small] = 0.0
    torch.testing.assert_close(mutant, ref, atol=1e-2, rtol=2e-2)  # the former check passes it
    for wrong in (mutant, torch.zeros_like(ref), ref * 0.9):
        with pytest.raises(AssertionError):
            assert_close_to_scale(wrong, ref)
    assert_close_to_scale(ref.bfloat16(), ref)  # bf16 rounding alone passes


# ---------------------------------------------------------------- real GPU


@requires_cuda
@pytest.mark.parametrize("normalization", ["pairs", "query_image"])
@pytest.mark.parametrize("use_rel_coords", [True, False])
def test_triton_matches_reference_on_gpu_fp32(normalization, use_rel_coords):
    import_triton()
    case, shapes = make_case(37, 1000, num_images=5, use_rel_coords=use_rel_coords, device="cuda")
    kw = dict(use_rel_coords=use_rel_coords, normalization=normalization)
    ref = run(case, shapes, "reference", **kw)
    assert_same(run(case, shapes, "triton", **kw), ref, atol=1e-5, rtol=1e-4)
    assert_same(run(case, shapes, "tiled", **kw), ref, atol=1e-5, rtol=1e-4)
    c_in = case["pixel_feats"].shape[1] + (2 if use_rel_coords else 0)
    assert resolve_impl("auto", case["params"], shapes, c_in) == "triton"


@requires_cuda
def test_triton_bf16_inputs_on_gpu():
    """bf16 params/feats: the kernel computes in fp32, so compare with the fp32 reference."""
    import_triton()
    bf16, as_fp32, shapes = _low_precision_case(torch.bfloat16, device="cuda")
    loss, grads, _ = run(bf16, shapes, "triton")
    ref_loss, ref_grads, _ = run(as_fp32, shapes, "reference")
    assert grads[0].dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref_loss, atol=1e-4, rtol=1e-3)
    assert_close_to_scale(grads[0], ref_grads[0])


@requires_cuda
def test_triton_is_deterministic():
    import_triton()
    case, shapes = make_case(50, 2000, device="cuda")
    a, b = run(case, shapes, "triton"), run(case, shapes, "triton")
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
