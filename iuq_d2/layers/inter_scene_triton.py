"""Fused Triton kernels for the inter-scene focal loss (optional: needs ``triton`` and CUDA).

Two kernels share the per-(query, entry block) math: the 3-layer dynamic MLP forward, the focal
loss against 0 and its derivative in the logit, and the backward through the layers, all in
registers with fp32 accumulation. No [Q, hidden, N] tensor ever reaches memory.

* ``_params_kernel``, grid (Q, S): program (q, s) walks entry blocks s, s + S, ... for query q
  and writes its loss, firing count and d loss / d (folded) parameters to its own slot of a
  [S, Q, ...] buffer; a ``sum(0)`` finishes them.
* ``_feats_kernel``, grid (entry blocks, G), only when ``pixel_feats`` requires grad: program
  (b, g) walks the queries of group g for entry block b (recomputing the forward) and writes
  d loss / d feats to a [G, N, C] buffer.

Every output slot has one writer, so there are no atomics and results are deterministic: the
price is recomputing the forward in ``_feats_kernel``. The matrices are tiny (8x10, 8x8, 1x8),
below ``tl.dot``'s 16-wide minimum, so the layers are broadcast-multiply-reduce in fp32 FMAs.

The relative coordinates are folded into the first layer by ``fold_dynamic_params`` (fp32,
O(Q * P), differentiable), so the kernels see ``[anchor(2), feats(C)]`` inputs; feats may be
fp32/fp16/bf16 and are cast to fp32 on load. An optional [Q, N] uint8 pair mask
(``EXCLUDE_OWN_FOOTPRINT``, ``SAME_CLASS_ONLY``) is read per (query, entry block) when
``HAS_MASK``; without one the kernels are compiled without the load. Set ``TRITON_INTERPRET=1``
before importing this module to run the kernels on CPU tensors (tests).
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .inter_scene import (
    InterSceneStats,
    fold_dynamic_params,
    inter_scene_weights,
)
from .triton_support import INTERPRET, TRITON_IMPORT_ERROR, tl, triton

BLOCK_N = 32
NUM_WARPS = 4


if triton is not None:

    @triton.jit
    def _load_layers(
        pack_ptr, q, PK, H: tl.constexpr, CIN: tl.constexpr, HP: tl.constexpr, CINP: tl.constexpr
    ):
        """Query q's folded layers from the packed [Q, PK] fp32 rows (zero-padded to HP/CINP)."""
        base = pack_ptr + q * PK
        rh = tl.arange(0, HP)
        ri = tl.arange(0, CINP)
        mh = rh < H
        w0 = tl.load(
            base + rh[:, None] * CIN + ri[None, :],
            mask=mh[:, None] & (ri[None, :] < CIN),
            other=0.0,
        )
        b0 = tl.load(base + H * CIN + rh, mask=mh, other=0.0)
        w1 = tl.load(
            base + H * CIN + H + rh[:, None] * H + rh[None, :],
            mask=mh[:, None] & mh[None, :],
            other=0.0,
        )
        b1 = tl.load(base + H * CIN + H + H * H + rh, mask=mh, other=0.0)
        w2 = tl.load(base + H * CIN + 2 * H + H * H + rh, mask=mh, other=0.0)
        b2 = tl.load(base + H * CIN + 3 * H + H * H)
        return w0, b0, w1, b1, w2, b2

    @triton.jit
    def _load_inputs(
        anchors_ptr,
        feats_ptr,
        offs_n,
        mask_n,
        C: tl.constexpr,
        NC: tl.constexpr,
        CINP: tl.constexpr,
    ):
        """[CINP, BLOCK_N] entry inputs: rows [0, NC) anchors, [NC, NC + C) feats, rest 0."""
        k = tl.arange(0, CINP)[:, None]
        n = offs_n[None, :]
        m = mask_n[None, :]
        a = tl.load(anchors_ptr + n * 2 + k, mask=m & (k < NC), other=0.0)
        f = tl.load(feats_ptr + n * C + (k - NC), mask=m & (k >= NC) & (k < NC + C), other=0.0)
        return a + f.to(tl.float32)

    @triton.jit
    def _forward(w0, b0, w1, b1, w2, b2, inp):
        """Post-ReLU activations [HP, BLOCK_N] of both hidden layers and the logits."""
        r1 = tl.maximum(tl.sum(w0[:, :, None] * inp[None, :, :], axis=1) + b0[:, None], 0.0)
        r2 = tl.maximum(tl.sum(w1[:, :, None] * r1[None, :, :], axis=1) + b1[:, None], 0.0)
        z = tl.sum(w2[:, None] * r2, axis=0) + b2
        return r1, r2, z

    @triton.jit
    def _focal(z, alpha, GAMMA: tl.constexpr):
        """Focal loss vs 0, d/dz of it ((1-a) p^g (g (1-p) sp + p)) and p = sigmoid(z)."""
        p = tl.sigmoid(z)
        sp = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
        if GAMMA == 2.0:
            pg = p * p
        elif GAMMA == 0.0:
            pg = p * 0.0 + 1.0
        else:
            pg = tl.where(p > 0.0, tl.exp(GAMMA * tl.log(p)), 0.0)
        scale = (1.0 - alpha) * pg
        return scale * sp, scale * (GAMMA * (1.0 - p) * sp + p), p

    @triton.jit
    def _pair_block(
        pack_ptr,
        q_img_ptr,
        qw_ptr,
        pair_mask_ptr,
        q,
        N,
        PK,
        alpha,
        img_n,
        pw,
        offs_n,
        mask_n,
        inp,
        H: tl.constexpr,
        CIN: tl.constexpr,
        HP: tl.constexpr,
        CINP: tl.constexpr,
        GAMMA: tl.constexpr,
        HAS_MASK: tl.constexpr,
    ):
        """Forward and backward of query q on one entry block, up to the first layer."""
        w0, b0, w1, b1, w2, b2 = _load_layers(pack_ptr, q, PK, H, CIN, HP, CINP)
        img_q = tl.load(q_img_ptr + q)
        qw = tl.load(qw_ptr + q)
        valid = mask_n & (img_n != img_q)
        if HAS_MASK:
            row = pair_mask_ptr + tl.cast(q, tl.int64) * N  # Q * N may pass 2**31
            keep = tl.load(row + offs_n, mask=mask_n, other=0)
            valid = valid & (keep != 0)
        wgt = tl.where(valid, qw * pw, 0.0)
        r1, r2, z = _forward(w0, b0, w1, b1, w2, b2, inp)
        loss, dz, p = _focal(z, alpha, GAMMA)
        gz = dz * wgt
        g_x2 = tl.where(r2 > 0.0, w2[:, None] * gz[None, :], 0.0)
        # d/d r1[k] = sum_j w1[j, k] g_x2[j]
        g_x1 = tl.where(r1 > 0.0, tl.sum(w1[:, :, None] * g_x2[:, None, :], axis=0), 0.0)
        fire = tl.where(valid & (p > 0.5), 1, 0)
        return w0, r1, r2, loss * wgt, fire, gz, g_x2, g_x1

    @triton.jit
    def _params_kernel(
        pack_ptr,
        anchors_ptr,
        feats_ptr,
        q_img_ptr,
        p_img_ptr,
        qw_ptr,
        pw_ptr,
        pair_mask_ptr,
        loss_ptr,
        fire_ptr,
        dpack_ptr,
        Q,
        N,
        PK,
        alpha,
        H: tl.constexpr,
        CIN: tl.constexpr,
        C: tl.constexpr,
        NC: tl.constexpr,
        HP: tl.constexpr,
        CINP: tl.constexpr,
        GAMMA: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HAS_MASK: tl.constexpr,
    ):
        q = tl.program_id(0)
        s = tl.program_id(1)
        num_s = tl.num_programs(1)
        loss_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        fire_acc = tl.zeros([BLOCK_N], dtype=tl.int32)
        db2 = tl.zeros([BLOCK_N], dtype=tl.float32)
        dw0 = tl.zeros([HP, CINP], dtype=tl.float32)
        db0 = tl.zeros([HP], dtype=tl.float32)
        dw1 = tl.zeros([HP, HP], dtype=tl.float32)
        db1 = tl.zeros([HP], dtype=tl.float32)
        dw2 = tl.zeros([HP], dtype=tl.float32)
        for start in range(s * BLOCK_N, N, num_s * BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            inp = _load_inputs(anchors_ptr, feats_ptr, offs_n, mask_n, C, NC, CINP)
            img_n = tl.load(p_img_ptr + offs_n, mask=mask_n, other=0)
            pw = tl.load(pw_ptr + offs_n, mask=mask_n, other=0.0)
            w0, r1, r2, loss, fire, gz, g_x2, g_x1 = _pair_block(
                pack_ptr,
                q_img_ptr,
                qw_ptr,
                pair_mask_ptr,
                q,
                N,
                PK,
                alpha,
                img_n,
                pw,
                offs_n,
                mask_n,
                inp,
                H,
                CIN,
                HP,
                CINP,
                GAMMA,
                HAS_MASK,
            )
            loss_acc += loss
            fire_acc += fire
            db2 += gz
            dw2 += tl.sum(r2 * gz[None, :], axis=1)
            dw1 += tl.sum(g_x2[:, None, :] * r1[None, :, :], axis=2)
            db1 += tl.sum(g_x2, axis=1)
            dw0 += tl.sum(g_x1[:, None, :] * inp[None, :, :], axis=2)
            db0 += tl.sum(g_x1, axis=1)
        slot = s * Q + q
        tl.store(loss_ptr + slot, tl.sum(loss_acc, axis=0))
        tl.store(fire_ptr + slot, tl.sum(fire_acc, axis=0))
        base = dpack_ptr + slot * PK
        rh = tl.arange(0, HP)
        ri = tl.arange(0, CINP)
        mh = rh < H
        tl.store(
            base + rh[:, None] * CIN + ri[None, :], dw0, mask=mh[:, None] & (ri[None, :] < CIN)
        )
        tl.store(base + H * CIN + rh, db0, mask=mh)
        tl.store(
            base + H * CIN + H + rh[:, None] * H + rh[None, :], dw1, mask=mh[:, None] & mh[None, :]
        )
        tl.store(base + H * CIN + H + H * H + rh, db1, mask=mh)
        tl.store(base + H * CIN + 2 * H + H * H + rh, dw2, mask=mh)
        tl.store(base + H * CIN + 3 * H + H * H, tl.sum(db2, axis=0))

    @triton.jit
    def _feats_kernel(
        pack_ptr,
        anchors_ptr,
        feats_ptr,
        q_img_ptr,
        p_img_ptr,
        qw_ptr,
        pw_ptr,
        pair_mask_ptr,
        dfeats_ptr,
        Q,
        N,
        PK,
        alpha,
        queries_per_group,
        H: tl.constexpr,
        CIN: tl.constexpr,
        C: tl.constexpr,
        NC: tl.constexpr,
        HP: tl.constexpr,
        CINP: tl.constexpr,
        GAMMA: tl.constexpr,
        BLOCK_N: tl.constexpr,
        HAS_MASK: tl.constexpr,
    ):
        b = tl.program_id(0)
        g = tl.program_id(1)
        offs_n = b * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        inp = _load_inputs(anchors_ptr, feats_ptr, offs_n, mask_n, C, NC, CINP)
        img_n = tl.load(p_img_ptr + offs_n, mask=mask_n, other=0)
        pw = tl.load(pw_ptr + offs_n, mask=mask_n, other=0.0)
        d_inp = tl.zeros([CINP, BLOCK_N], dtype=tl.float32)
        q_end = tl.minimum(Q, (g + 1) * queries_per_group)
        for q in range(g * queries_per_group, q_end):
            w0, r1, r2, loss, fire, gz, g_x2, g_x1 = _pair_block(
                pack_ptr,
                q_img_ptr,
                qw_ptr,
                pair_mask_ptr,
                q,
                N,
                PK,
                alpha,
                img_n,
                pw,
                offs_n,
                mask_n,
                inp,
                H,
                CIN,
                HP,
                CINP,
                GAMMA,
                HAS_MASK,
            )
            # d/d inp[k] = sum_j w0[j, k] g_x1[j]
            d_inp += tl.sum(w0[:, :, None] * g_x1[:, None, :], axis=0)
        k = tl.arange(0, CINP)[:, None]
        ptr = dfeats_ptr + g * N * C + offs_n[None, :] * C + (k - NC)
        tl.store(ptr, d_inp, mask=mask_n[None, :] & (k >= NC) & (k < NC + C))


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _target_programs(device: torch.device) -> int:
    """Enough programs to fill the GPU a few times over (few under the interpreter)."""
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def launch_inter_scene_kernels(
    pack: Tensor,
    anchors: Tensor,
    feats: Tensor,
    query_images: Tensor,
    pixel_images: Tensor,
    qw: Tensor,
    pw: Tensor,
    hidden: int,
    c_in: int,
    num_coords: int,
    alpha: float,
    gamma: float,
    need_feats: bool,
    pair_mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Run the kernels on prepared inputs; returns loss, firing count, d pack, d feats.

    ``pair_mask``: None or a contiguous [Q, N] uint8 tensor (nonzero: the pair may count).
    Private entry point of the interpreter tests (CPU tensors); no checks beyond shapes.
    """
    if triton is None:
        raise RuntimeError(f"impl='triton' needs triton: {TRITON_IMPORT_ERROR}")
    num_q, pk = pack.shape
    num_n, c = feats.shape
    device = pack.device
    loss = torch.zeros((), dtype=torch.float32, device=device)
    fire = torch.zeros((), dtype=torch.int64, device=device)
    d_pack = torch.zeros_like(pack)
    d_feats = torch.zeros(num_n, c, dtype=torch.float32, device=device) if need_feats else None
    if num_q == 0 or num_n == 0:
        return loss, fire, d_pack, d_feats
    consts = dict(
        H=hidden,
        CIN=c_in,
        C=c,
        NC=num_coords,
        HP=_next_pow2(hidden),
        CINP=_next_pow2(c_in),
        GAMMA=float(gamma),
        BLOCK_N=BLOCK_N,
        HAS_MASK=pair_mask is not None,
    )
    # Without a mask the kernels never read the pointer: any tensor of the device will do.
    mask_arg = pair_mask if pair_mask is not None else query_images
    tensors = (pack, anchors, feats, query_images, pixel_images, qw, pw, mask_arg)
    num_blocks = triton.cdiv(num_n, BLOCK_N)
    target = _target_programs(device)
    splits = max(1, min(num_blocks, triton.cdiv(target, num_q)))
    loss_part = torch.empty(splits * num_q, dtype=torch.float32, device=device)
    fire_part = torch.empty(splits * num_q, dtype=torch.int32, device=device)
    d_pack_part = torch.empty(splits, num_q, pk, dtype=torch.float32, device=device)
    _params_kernel[(num_q, splits)](
        *tensors,
        loss_part,
        fire_part,
        d_pack_part,
        num_q,
        num_n,
        pk,
        float(alpha),
        num_warps=NUM_WARPS,
        **consts,
    )
    loss, fire, d_pack = loss_part.sum(), fire_part.sum(dtype=torch.int64), d_pack_part.sum(0)
    if need_feats:
        groups = max(1, min(num_q, triton.cdiv(target, num_blocks)))
        per_group = triton.cdiv(num_q, groups)
        groups = triton.cdiv(num_q, per_group)
        d_feats_part = torch.empty(groups, num_n, c, dtype=torch.float32, device=device)
        _feats_kernel[(num_blocks, groups)](
            *tensors,
            d_feats_part,
            num_q,
            num_n,
            pk,
            float(alpha),
            per_group,
            num_warps=NUM_WARPS,
            **consts,
        )
        d_feats = d_feats_part.sum(0)
    return loss, fire, d_pack, d_feats


class TritonInterSceneLoss(torch.autograd.Function):
    """Loss of the packed folded layers [Q, PK] on entries; gradients computed in forward."""

    @staticmethod
    def forward(
        ctx,
        pack: Tensor,
        feats: Tensor,
        anchors: Tensor,
        query_images: Tensor,
        pixel_images: Tensor,
        qw: Tensor,
        pw: Tensor,
        hidden: int,
        c_in: int,
        num_coords: int,
        alpha: float,
        gamma: float,
        pair_mask: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        need_feats = ctx.needs_input_grad[1]
        loss, fire, d_pack, d_feats = launch_inter_scene_kernels(
            pack.detach(),
            anchors,
            feats.detach(),
            query_images,
            pixel_images,
            qw,
            pw,
            hidden,
            c_in,
            num_coords,
            alpha,
            gamma,
            need_feats,
            pair_mask,
        )
        ctx.feats_dtype = feats.dtype
        ctx.save_for_backward(d_pack, *([d_feats] if need_feats else []))
        ctx.mark_non_differentiable(fire)
        return loss, fire

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_fire: Optional[Tensor]):
        d_pack, *rest = ctx.saved_tensors
        d_feats = (rest[0] * grad_loss).to(ctx.feats_dtype) if rest else None
        return (d_pack * grad_loss, d_feats) + (None,) * 11


def _check_shapes(layer_shapes: Sequence[Tuple[int, int]], c_in: int) -> int:
    shapes = [tuple(s) for s in layer_shapes]
    hidden = shapes[0][0] if shapes else 0
    if shapes != [(hidden, c_in), (hidden, hidden), (1, hidden)]:
        raise NotImplementedError(
            f"the triton kernel handles 3 layers (H, {c_in}), (H, H), (1, H); got {shapes}: "
            "use impl='tiled'"
        )
    return hidden


def triton_inter_scene_focal_loss(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    query_images: Tensor,
    pixel_feats: Tensor,
    pixel_anchors: Tensor,
    pixel_images: Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
    alpha: float = 0.25,
    gamma: float = 2.0,
    normalization: str = "pairs",
    pair_mask: Optional[Tensor] = None,
) -> Tuple[Tensor, InterSceneStats]:
    """``inter_scene_focal_loss`` with the fused kernels; CUDA tensors only (see module doc)."""
    if triton is None:
        raise RuntimeError(
            f"impl='triton' needs triton, which failed to import: "
            f"{TRITON_IMPORT_ERROR!r}; use impl='tiled'"
        )
    if not INTERPRET and not (params.is_cuda and pixel_feats.is_cuda):
        raise ValueError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before "
            "importing iuq_d2.layers.inter_scene_triton); use impl='tiled'"
        )
    num_coords = 2 if use_rel_coords else 0
    hidden = _check_shapes(layer_shapes, num_coords + pixel_feats.shape[1])
    weights, biases = fold_dynamic_params(
        params, query_anchors, query_soi, layer_shapes, use_rel_coords, torch.float32
    )
    pack = torch.cat(
        [
            weights[0].flatten(1),
            biases[0],
            weights[1].flatten(1),
            biases[1],
            weights[2].flatten(1),
            biases[2],
        ],
        dim=1,
    ).contiguous()
    qw, pw, num_pairs = inter_scene_weights(
        query_images, pixel_images, normalization, pair_mask=pair_mask
    )
    if pair_mask is not None:
        pair_mask = pair_mask.to(torch.uint8).contiguous()
    anchors = pixel_anchors.float().contiguous()
    feats = pixel_feats
    if feats.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        feats = feats.float()
    loss, fire = TritonInterSceneLoss.apply(
        pack,
        feats.contiguous(),
        anchors,
        query_images.contiguous(),
        pixel_images.contiguous(),
        qw.contiguous(),
        pw.contiguous(),
        hidden,
        num_coords + pixel_feats.shape[1],
        num_coords,
        float(alpha),
        float(gamma),
        pair_mask,
    )
    return loss, InterSceneStats(num_pairs, fire.float() / num_pairs.clamp(min=1))
