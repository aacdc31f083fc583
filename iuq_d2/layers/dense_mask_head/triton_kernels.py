"""Fused Triton kernels for the dense dynamic mask head (optional: needs ``triton`` and CUDA).

The kernels read the raw [Q, P] parameters (AdelaiDet's layout: the three weights, then the
three biases) and compute each pixel's relative coordinates ``(location - cell centre) / soi``
in registers, so no [Q, 2 + C, HW] input or [Q, hidden, HW] activation reaches memory:

* ``_forward_kernel``, grid (Q, pixel blocks): the 3-layer MLP of query q on a block of its
  image's pixels; writes the [Q, HW] logits.
* ``_params_grad_kernel``, grid (Q, S): program (q, s) walks pixel blocks s, s + S, ...,
  recomputes the forward, back-propagates d logits and writes d params to its own slot of a
  [S, Q, P] buffer; a ``sum(0)`` finishes them.
* ``_feats_grad_kernel``, grid (pixel blocks, B, G), only when the features need gradient:
  program (b, blk, g) walks group g of image b's queries (sorted by image) on that pixel block,
  recomputes their forward and writes d feats to a [G, B, C, HW] buffer.

Every output slot has one writer: no atomics, deterministic results, at the price of
recomputing the forward in both backward kernels. Inputs may be fp32/fp16/bf16 (fp32 on load).
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..triton_support import (
    BLOCK_N,
    NUM_WARPS,
    check_three_layers,
    check_triton_inputs,
    next_pow2,
    on_device,
    target_programs,
    tl,
    triton,
)
from .common import feature_grad_segments

if triton is not None:
    from ..triton_support import load_mlp3, mlp3_backward, mlp3_forward, store_mlp3

    @triton.jit
    def _load_pixel_inputs(
        feats_ptr,
        loc_ptr,
        soi_ptr,
        q,
        img,
        offs_n,
        mask_n,
        HW,
        W,
        STRIDE: tl.constexpr,
        C: tl.constexpr,
        NC: tl.constexpr,
        CINP: tl.constexpr,
    ):
        """[CINP, BLOCK_N] inputs of query q: rows [0, NC) relative coordinates, then the C
        features of image img, then 0. The coordinates are the reference's fp32 ops, in order."""
        k = tl.arange(0, CINP)[:, None]
        n = offs_n[None, :]
        m = mask_n[None, :]
        f = tl.load(
            feats_ptr + img * C * HW + (k - NC) * HW + n,
            mask=m & (k >= NC) & (k < NC + C),
            other=0.0,
        ).to(tl.float32)
        if NC > 0:
            soi = tl.load(soi_ptr + q)
            px = ((offs_n % W) * STRIDE + STRIDE // 2).to(tl.float32)
            py = ((offs_n // W) * STRIDE + STRIDE // 2).to(tl.float32)
            rx = tl.math.div_rn(tl.load(loc_ptr + q * 2) - px, soi)
            ry = tl.math.div_rn(tl.load(loc_ptr + q * 2 + 1) - py, soi)
            f = tl.where(k == 0, rx[None, :], tl.where(k == 1, ry[None, :], f))
        return f

    @triton.jit
    def _forward_kernel(
        params_ptr,
        feats_ptr,
        loc_ptr,
        soi_ptr,
        img_ptr,
        out_ptr,
        HW,
        W,
        P,
        STRIDE: tl.constexpr,
        H: tl.constexpr,
        CIN: tl.constexpr,
        C: tl.constexpr,
        NC: tl.constexpr,
        HP: tl.constexpr,
        CINP: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        q = tl.program_id(0)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < HW
        img = tl.load(img_ptr + q)
        w0, b0, w1, b1, w2, b2 = load_mlp3(params_ptr, q, P, H, CIN, HP, CINP)
        inp = _load_pixel_inputs(
            feats_ptr, loc_ptr, soi_ptr, q, img, offs_n, mask_n, HW, W, STRIDE, C, NC, CINP
        )
        _, _, z = mlp3_forward(w0, b0, w1, b1, w2, b2, inp)
        tl.store(out_ptr + q.to(tl.int64) * HW + offs_n, z, mask=mask_n)

    @triton.jit
    def _params_grad_kernel(
        params_ptr,
        feats_ptr,
        loc_ptr,
        soi_ptr,
        img_ptr,
        gout_ptr,
        dparams_ptr,
        Q,
        HW,
        W,
        P,
        STRIDE: tl.constexpr,
        H: tl.constexpr,
        CIN: tl.constexpr,
        C: tl.constexpr,
        NC: tl.constexpr,
        HP: tl.constexpr,
        CINP: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        q = tl.program_id(0)
        s = tl.program_id(1)
        num_s = tl.num_programs(1)
        img = tl.load(img_ptr + q)
        w0, b0, w1, b1, w2, b2 = load_mlp3(params_ptr, q, P, H, CIN, HP, CINP)
        db2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        dw0 = tl.zeros([HP, CINP], dtype=tl.float32)
        db0 = tl.zeros([HP], dtype=tl.float32)
        dw1 = tl.zeros([HP, HP], dtype=tl.float32)
        db1 = tl.zeros([HP], dtype=tl.float32)
        dw2 = tl.zeros([HP], dtype=tl.float32)
        for start in range(s * BLOCK_N, HW, num_s * BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < HW
            inp = _load_pixel_inputs(
                feats_ptr, loc_ptr, soi_ptr, q, img, offs_n, mask_n, HW, W, STRIDE, C, NC, CINP
            )
            r1, r2, z = mlp3_forward(w0, b0, w1, b1, w2, b2, inp)
            gz = tl.load(gout_ptr + q.to(tl.int64) * HW + offs_n, mask=mask_n, other=0.0)
            g_x2, g_x1 = mlp3_backward(w1, w2, r1, r2, gz)
            db2 += gz
            dw2 += tl.sum(r2 * gz[None, :], axis=1)
            dw1 += tl.sum(g_x2[:, None, :] * r1[None, :, :], axis=2)
            db1 += tl.sum(g_x2, axis=1)
            dw0 += tl.sum(g_x1[:, None, :] * inp[None, :, :], axis=2)
            db0 += tl.sum(g_x1, axis=1)
        store_mlp3(
            dparams_ptr,
            s * Q + q,
            P,
            dw0,
            db0,
            dw1,
            db1,
            dw2,
            tl.sum(db2, axis=0),
            H,
            CIN,
            HP,
            CINP,
        )

    @triton.jit
    def _feats_grad_kernel(
        params_ptr,
        feats_ptr,
        loc_ptr,
        soi_ptr,
        order_ptr,
        bounds_ptr,
        gout_ptr,
        dfeats_ptr,
        B,
        HW,
        W,
        P,
        queries_per_group,
        STRIDE: tl.constexpr,
        H: tl.constexpr,
        CIN: tl.constexpr,
        C: tl.constexpr,
        NC: tl.constexpr,
        HP: tl.constexpr,
        CINP: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        img = tl.program_id(1)
        g = tl.program_id(2)
        mask_n = offs_n < HW
        start = tl.load(bounds_ptr + img) + g * queries_per_group
        end = tl.minimum(tl.load(bounds_ptr + img + 1), start + queries_per_group)
        d_inp = tl.zeros([CINP, BLOCK_N], dtype=tl.float32)
        for i in range(start, end):
            q = tl.load(order_ptr + i)
            w0, b0, w1, b1, w2, b2 = load_mlp3(params_ptr, q, P, H, CIN, HP, CINP)
            inp = _load_pixel_inputs(
                feats_ptr, loc_ptr, soi_ptr, q, img, offs_n, mask_n, HW, W, STRIDE, C, NC, CINP
            )
            r1, r2, z = mlp3_forward(w0, b0, w1, b1, w2, b2, inp)
            gz = tl.load(gout_ptr + q * HW + offs_n, mask=mask_n, other=0.0)
            g_x2, g_x1 = mlp3_backward(w1, w2, r1, r2, gz)
            # d/d inp[k] = sum_j w0[j, k] g_x1[j]
            d_inp += tl.sum(w0[:, :, None] * g_x1[:, None, :], axis=0)
        k = tl.arange(0, CINP)[:, None]
        base = dfeats_ptr + (g * B + img).to(tl.int64) * C * HW
        ptr = base + (k - NC) * HW + offs_n[None, :]
        tl.store(ptr, d_inp, mask=mask_n[None, :] & (k >= NC) & (k < NC + C))


def _consts(hidden: int, channels: int, num_coords: int, stride: int) -> dict:
    c_in = num_coords + channels
    return dict(
        STRIDE=int(stride),
        H=hidden,
        CIN=c_in,
        C=channels,
        NC=num_coords,
        HP=next_pow2(hidden),
        CINP=next_pow2(c_in),
        BLOCK_N=BLOCK_N,
    )


def launch_forward(
    params: Tensor,
    feats: Tensor,
    locations: Tensor,
    soi: Tensor,
    im_inds: Tensor,
    width: int,
    consts: dict,
) -> Tensor:
    """[Q, HW] fp32 logits; feats [B, C, HW] contiguous. Private: the tests call it."""
    num_q, num_p = params.shape
    hw = feats.shape[2]
    out = torch.empty(num_q, hw, dtype=torch.float32, device=feats.device)
    if num_q == 0 or hw == 0:
        return out
    grid = (num_q, triton.cdiv(hw, BLOCK_N))
    _forward_kernel[grid](
        params, feats, locations, soi, im_inds, out, hw, width, num_p, num_warps=NUM_WARPS, **consts
    )
    return out


def launch_backward(
    params: Tensor,
    feats: Tensor,
    locations: Tensor,
    soi: Tensor,
    im_inds: Tensor,
    grad_out: Tensor,
    width: int,
    consts: dict,
    need_feats: bool,
    segments: Optional[Tuple[Tensor, Tensor, int]] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """fp32 d params [Q, P] and d feats [B, C, HW] (or None) from d logits [Q, HW].
    ``segments`` (:func:`feature_grad_segments`), computed ahead, keep the host sync it costs
    out of the backward."""
    num_q, num_p = params.shape
    num_images, channels, hw = feats.shape
    device = feats.device
    d_params = torch.zeros(num_q, num_p, dtype=torch.float32, device=device)
    d_feats = None
    if need_feats:
        d_feats = torch.zeros(num_images, channels, hw, dtype=torch.float32, device=device)
    if num_q == 0 or hw == 0:
        return d_params, d_feats
    tensors = (params, feats, locations, soi)
    num_blocks = triton.cdiv(hw, BLOCK_N)
    target = target_programs(device)
    splits = max(1, min(num_blocks, triton.cdiv(target, num_q)))
    part = torch.empty(splits, num_q, num_p, dtype=torch.float32, device=device)
    _params_grad_kernel[(num_q, splits)](
        *tensors, im_inds, grad_out, part, num_q, hw, width, num_p, num_warps=NUM_WARPS, **consts
    )
    d_params = part.sum(0)
    if need_feats:
        order, bounds_t, most = segments or feature_grad_segments(im_inds, num_images)
        groups = max(1, min(most, triton.cdiv(target, num_blocks * num_images)))
        per_group = triton.cdiv(most, groups)
        groups = triton.cdiv(most, per_group)
        part = torch.empty(groups, num_images, channels, hw, dtype=torch.float32, device=device)
        _feats_grad_kernel[(num_blocks, num_images, groups)](
            *tensors,
            order,
            bounds_t,
            grad_out,
            part,
            num_images,
            hw,
            width,
            num_p,
            per_group,
            num_warps=NUM_WARPS,
            **consts,
        )
        d_feats = part.sum(0)
    return d_params, d_feats


class TritonDenseMaskHead(torch.autograd.Function):
    """[Q, HW] logits of the raw parameters on [B, C, HW] features; the backward recomputes."""

    @staticmethod
    def forward(
        ctx,
        params: Tensor,
        feats: Tensor,
        locations: Tensor,
        soi: Tensor,
        im_inds: Tensor,
        width: int,
        consts: dict,
    ) -> Tensor:
        params, feats = params.detach(), feats.detach()
        with on_device(feats.device):
            out = launch_forward(params, feats, locations, soi, im_inds, width, consts)
        # Read in the forward: a host sync in the backward would stall DDP's overlap.
        ctx.segments = None
        if ctx.needs_input_grad[1]:
            ctx.segments = feature_grad_segments(im_inds, feats.shape[0])
        ctx.save_for_backward(params, feats, locations, soi, im_inds)
        ctx.width, ctx.consts = width, consts
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        params, feats, locations, soi, im_inds = ctx.saved_tensors
        need_feats = ctx.needs_input_grad[1]
        with on_device(feats.device):
            d_params, d_feats = launch_backward(
                params,
                feats,
                locations,
                soi,
                im_inds,
                grad_out.float().contiguous(),
                ctx.width,
                ctx.consts,
                need_feats,
                ctx.segments,
            )
        d_feats = d_feats.to(feats.dtype) if need_feats else None
        return (d_params.to(params.dtype), d_feats) + (None,) * 5


def _kernel_dtype(t: Tensor) -> Tensor:
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        t = t.float()
    return t.contiguous()


def triton_dense_mask_logits(
    mask_feats: Tensor,
    params: Tensor,
    im_inds: Tensor,
    locations: Tensor,
    soi: Tensor,
    stride: int,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
) -> Tensor:
    """``dense_mask_logits`` with the fused kernels; CUDA tensors only (see module doc)."""
    check_triton_inputs(params, mask_feats)
    num_images, channels, h, w = mask_feats.shape
    num_q = params.shape[0]
    num_coords = 2 if use_rel_coords else 0
    hidden = check_three_layers(layer_shapes, num_coords + channels)
    if params.shape[1] != sum(o * i + o for o, i in layer_shapes):
        raise ValueError(f"expected {sum(o * i + o for o, i in layer_shapes)} params per query")
    feats = _kernel_dtype(mask_feats).reshape(num_images, channels, h * w)
    out = TritonDenseMaskHead.apply(
        _kernel_dtype(params),
        feats,
        locations.float().contiguous(),
        soi.float().contiguous(),
        im_inds.long().contiguous(),
        w,
        _consts(hidden, channels, num_coords, stride),
    )
    dtype = torch.promote_types(mask_feats.dtype, params.dtype)
    return out.to(dtype).reshape(num_q, 1, h, w)
