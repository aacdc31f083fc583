"""Triton, when it imports: the kernels' one import guard and the helpers they share.

Triton is optional: without it (or with a broken install) ``triton`` and ``tl`` are None, the
kernel modules define no kernels, and every op runs on its tiled path. ``INTERPRET`` is read once,
at import, as Triton itself reads ``TRITON_INTERPRET`` when a kernel is decorated: interpreted
kernels accept CPU tensors.

Both fused ops run the same 3-layer dynamic MLP per (query, block of pixels) in registers. Its
parameters are read from a [Q, P] row in AdelaiDet's layout (``dynamic_mlp``: the weights
[H, CIN], [H, H], [1, H], then the biases); the layers are too small for ``tl.dot`` (16-wide
minimum), so they are broadcast-multiply-reduce in fp32.
"""

import contextlib
import logging
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

try:
    import triton
    import triton.language as tl
except Exception as e:  # ImportError, or a broken install (e.g. no compatible backend)
    triton, tl = None, None
    TRITON_IMPORT_ERROR: Optional[BaseException] = e
else:
    TRITON_IMPORT_ERROR = None

logger = logging.getLogger(__name__)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK_N = 32
NUM_WARPS = 4


def triton_available() -> bool:
    return triton is not None


def next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def target_programs(device: torch.device) -> int:
    """Enough programs to fill the GPU a few times over (few under the interpreter)."""
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def three_layer_hidden(layer_shapes: Sequence[Tuple[int, int]], c_in: int) -> Optional[int]:
    """The hidden width when the head is the 3-layer MLP the kernels implement, else None."""
    shapes = [tuple(s) for s in layer_shapes]
    hidden = shapes[0][0] if shapes else 0
    if shapes != [(hidden, c_in), (hidden, hidden), (1, hidden)]:
        return None
    return hidden


IMPLS = ("auto", "reference", "tiled", "triton")
# (op, device, dtype) -> whether its Triton path passed the first-use check in this process.
_FIRST_USE: Dict[Tuple[str, str, torch.dtype], bool] = {}
_LOGGED: set = set()

# The first-use check of an op: None when its Triton path agrees with its tiled path on a small
# problem, else the reason (a compile or launch error is caught by the caller).
FirstUseCheck = Callable[[], Optional[str]]


def passes_first_use_check(
    op: str, device: torch.device, dtype: torch.dtype, check: FirstUseCheck
) -> bool:
    """Run ``check`` once per (op, device, dtype) in this process and remember its verdict; a
    failure warns once, naming the reason, and the op then runs on its tiled path."""
    key = (op, str(device), dtype)
    if key not in _FIRST_USE:
        try:
            reason = check()
        except Exception as e:  # a compile or launch error of the kernels
            reason = f"{type(e).__name__}: {e}"
        _FIRST_USE[key] = reason is None
        if reason is not None:
            logger.warning(
                f"{op}: the Triton kernels failed their first-use check on {device} ({dtype}): "
                f"{reason}. Using the tiled path instead."
            )
    return _FIRST_USE[key]


def resolve_impl(
    impl: str,
    tensor: torch.Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    c_in: int,
    op: str = "",
    check: Optional[FirstUseCheck] = None,
) -> str:
    """``impl``, or for "auto" the Triton kernels where they run, support the head (a CUDA
    ``tensor``, Triton importable, three layers) and pass ``check`` on first use, the tiled path
    elsewhere. The choice for ``op`` is logged once per device and dtype."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    supported = three_layer_hidden(layer_shapes, c_in) is not None
    chosen = "tiled"
    if tensor.is_cuda and triton_available() and supported:
        passed = check is None or passes_first_use_check(op, tensor.device, tensor.dtype, check)
        chosen = "triton" if passed else "tiled"
    if op and (op, str(tensor.device), tensor.dtype) not in _LOGGED:
        _LOGGED.add((op, str(tensor.device), tensor.dtype))
        logger.info(f"{op} on {tensor.device} ({tensor.dtype}): {chosen} implementation")
    return chosen


def compare_paths(
    name: str, got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]
) -> Optional[str]:
    """None when every tensor of ``got`` is within 1e-3 of ``expected`` relative to the largest
    magnitude of its expected tensor (both paths accumulate in fp32), else which one is off."""
    for index, (a, b) in enumerate(zip(got, expected)):
        a, b = a.detach().float(), b.detach().float()
        scale = float(b.abs().max()) if b.numel() else 0.0
        if a.shape != b.shape or not bool(torch.isfinite(a).all()):
            return f"{name} output {index}: shape {tuple(a.shape)} or non-finite values"
        error = float((a - b).abs().max()) if b.numel() else 0.0
        if error > 1e-3 * (1.0 + scale):
            return f"{name} output {index} is {error:.3g} off the tiled path (scale {scale:.3g})"
    return None


def check_three_layers(layer_shapes: Sequence[Tuple[int, int]], c_in: int) -> int:
    hidden = three_layer_hidden(layer_shapes, c_in)
    if hidden is None:
        raise NotImplementedError(
            f"the triton kernels handle 3 layers (H, {c_in}), (H, H), (1, H); got "
            f"{[tuple(s) for s in layer_shapes]}: use impl='tiled'"
        )
    return hidden


def on_device(device: torch.device):
    """A context in which Triton launches on ``device``: it launches on the current CUDA
    device, whatever device the tensors are on."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def check_triton_inputs(*tensors: torch.Tensor) -> None:
    if triton is None:
        raise RuntimeError(
            f"impl='triton' needs triton, which failed to import: {TRITON_IMPORT_ERROR!r}; "
            "use impl='tiled'"
        )
    if not INTERPRET and not all(t.is_cuda for t in tensors):
        raise ValueError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before importing "
            "iuq_d2); use impl='tiled'"
        )


if triton is not None:

    @triton.jit
    def load_mlp3(
        params_ptr, q, P, H: tl.constexpr, CIN: tl.constexpr, HP: tl.constexpr, CINP: tl.constexpr
    ):
        """Query q's layers from its [P] row (zero-padded to HP/CINP), as fp32."""
        base = params_ptr + q.to(tl.int64) * P
        rh = tl.arange(0, HP)
        ri = tl.arange(0, CINP)
        mh = rh < H
        w0 = tl.load(
            base + rh[:, None] * CIN + ri[None, :],
            mask=mh[:, None] & (ri[None, :] < CIN),
            other=0.0,
        ).to(tl.float32)
        w1 = tl.load(
            base + H * CIN + rh[:, None] * H + rh[None, :],
            mask=mh[:, None] & mh[None, :],
            other=0.0,
        ).to(tl.float32)
        w2 = tl.load(base + H * CIN + H * H + rh, mask=mh, other=0.0).to(tl.float32)
        b0 = tl.load(base + H * CIN + H * H + H + rh, mask=mh, other=0.0).to(tl.float32)
        b1 = tl.load(base + H * CIN + H * H + 2 * H + rh, mask=mh, other=0.0).to(tl.float32)
        b2 = tl.load(base + H * CIN + H * H + 3 * H).to(tl.float32)
        return w0, b0, w1, b1, w2, b2

    @triton.jit
    def store_mlp3(
        out_ptr,
        slot,
        P,
        dw0,
        db0,
        dw1,
        db1,
        dw2,
        db2,
        H: tl.constexpr,
        CIN: tl.constexpr,
        HP: tl.constexpr,
        CINP: tl.constexpr,
    ):
        """Write gradients of the layers to row ``slot`` of a [*, P] buffer, in the same layout."""
        base = out_ptr + slot.to(tl.int64) * P
        rh = tl.arange(0, HP)
        ri = tl.arange(0, CINP)
        mh = rh < H
        tl.store(
            base + rh[:, None] * CIN + ri[None, :], dw0, mask=mh[:, None] & (ri[None, :] < CIN)
        )
        tl.store(
            base + H * CIN + rh[:, None] * H + rh[None, :], dw1, mask=mh[:, None] & mh[None, :]
        )
        tl.store(base + H * CIN + H * H + rh, dw2, mask=mh)
        tl.store(base + H * CIN + H * H + H + rh, db0, mask=mh)
        tl.store(base + H * CIN + H * H + 2 * H + rh, db1, mask=mh)
        tl.store(base + H * CIN + H * H + 3 * H, db2)

    @triton.jit
    def mlp3_forward(w0, b0, w1, b1, w2, b2, inp):
        """Post-ReLU activations [HP, BLOCK_N] of both hidden layers and the logits."""
        r1 = tl.maximum(tl.sum(w0[:, :, None] * inp[None, :, :], axis=1) + b0[:, None], 0.0)
        r2 = tl.maximum(tl.sum(w1[:, :, None] * r1[None, :, :], axis=1) + b1[:, None], 0.0)
        z = tl.sum(w2[:, None] * r2, axis=0) + b2
        return r1, r2, z

    @triton.jit
    def mlp3_backward(w1, w2, r1, r2, gz):
        """d logits [BLOCK_N] -> d (pre-ReLU) layer-2 and layer-1 outputs [HP, BLOCK_N]."""
        g_x2 = tl.where(r2 > 0.0, w2[:, None] * gz[None, :], 0.0)
        # d/d r1[k] = sum_j w1[j, k] g_x2[j]
        g_x1 = tl.where(r1 > 0.0, tl.sum(w1[:, :, None] * g_x2[:, None, :], axis=0), 0.0)
        return g_x2, g_x1
