"""A fused Triton kernel for the inter-scene focal loss (optional: needs ``triton`` and CUDA).

``_params_kernel``, grid (Q, S): program (q, s) walks entry blocks s, s + S, ... for query q,
runs the 3-layer dynamic MLP forward, the focal loss against 0 and its derivative, and the
backward through the layers, all in registers with fp32 accumulation, and writes its loss,
firing count and d loss / d (folded) parameters to its own slot of an [S, Q, ...] buffer; a
``sum(0)`` finishes them. Every slot has one writer: no atomics, deterministic results, and no
[Q, hidden, N] tensor ever reaches memory.

The relative coordinates are folded into the first layer by ``fold_dynamic_params`` (fp32,
O(Q * P), differentiable), so the kernel sees ``[anchor(2), feats(C)]`` inputs; the folded
layers are packed in AdelaiDet's layout, as the dense mask head's kernels read them. Set
``TRITON_INTERPRET=1`` before importing iuq_d2 to run the kernel on CPU tensors (tests).
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..dynamic_mlp import fold_dynamic_params
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
from .pairs import InterSceneStats, inter_scene_weights

if triton is not None:
    from ..triton_support import load_mlp3, mlp3_backward, mlp3_forward, store_mlp3

    @triton.jit
    def _load_entry_inputs(
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
    def _params_kernel(
        pack_ptr,
        anchors_ptr,
        feats_ptr,
        q_img_ptr,
        p_img_ptr,
        qw_ptr,
        pw_ptr,
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
    ):
        q = tl.program_id(0)
        s = tl.program_id(1)
        num_s = tl.num_programs(1)
        w0, b0, w1, b1, w2, b2 = load_mlp3(pack_ptr, q, PK, H, CIN, HP, CINP)
        img_q = tl.load(q_img_ptr + q)
        qw = tl.load(qw_ptr + q)
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
            inp = _load_entry_inputs(anchors_ptr, feats_ptr, offs_n, mask_n, C, NC, CINP)
            img_n = tl.load(p_img_ptr + offs_n, mask=mask_n, other=0)
            pw = tl.load(pw_ptr + offs_n, mask=mask_n, other=0.0)
            valid = mask_n & (img_n != img_q)
            wgt = tl.where(valid, qw * pw, 0.0)
            r1, r2, z = mlp3_forward(w0, b0, w1, b1, w2, b2, inp)
            loss, dz, p = _focal(z, alpha, GAMMA)
            gz = dz * wgt
            g_x2, g_x1 = mlp3_backward(w1, w2, r1, r2, gz)
            loss_acc += loss * wgt
            fire_acc += tl.where(valid & (p > 0.5), 1, 0)
            db2 += gz
            dw2 += tl.sum(r2 * gz[None, :], axis=1)
            dw1 += tl.sum(g_x2[:, None, :] * r1[None, :, :], axis=2)
            db1 += tl.sum(g_x2, axis=1)
            dw0 += tl.sum(g_x1[:, None, :] * inp[None, :, :], axis=2)
            db0 += tl.sum(g_x1, axis=1)
        slot = s * Q + q
        tl.store(loss_ptr + slot, tl.sum(loss_acc, axis=0))
        tl.store(fire_ptr + slot, tl.sum(fire_acc, axis=0))
        store_mlp3(
            dpack_ptr, slot, PK, dw0, db0, dw1, db1, dw2, tl.sum(db2, axis=0), H, CIN, HP, CINP
        )


def launch_inter_scene_kernel(
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
) -> Tuple[Tensor, Tensor, Tensor]:
    """Run the kernel on prepared inputs; returns the loss, the firing count and d pack.
    Private entry point of the interpreter tests (CPU tensors); no checks beyond shapes."""
    num_q, pk = pack.shape
    num_n, c = feats.shape
    device = pack.device
    if num_q == 0 or num_n == 0:
        zero = torch.zeros((), dtype=torch.float32, device=device)
        return zero, torch.zeros((), dtype=torch.int64, device=device), torch.zeros_like(pack)
    num_blocks = triton.cdiv(num_n, BLOCK_N)
    splits = max(1, min(num_blocks, triton.cdiv(target_programs(device), num_q)))
    loss_part = torch.empty(splits * num_q, dtype=torch.float32, device=device)
    fire_part = torch.empty(splits * num_q, dtype=torch.int32, device=device)
    d_pack_part = torch.empty(splits, num_q, pk, dtype=torch.float32, device=device)
    with on_device(device):
        _params_kernel[(num_q, splits)](
            pack,
            anchors,
            feats,
            query_images,
            pixel_images,
            qw,
            pw,
            loss_part,
            fire_part,
            d_pack_part,
            num_q,
            num_n,
            pk,
            float(alpha),
            H=hidden,
            CIN=c_in,
            C=c,
            NC=num_coords,
            HP=next_pow2(hidden),
            CINP=next_pow2(c_in),
            GAMMA=float(gamma),
            BLOCK_N=BLOCK_N,
            num_warps=NUM_WARPS,
        )
    return loss_part.sum(), fire_part.sum(dtype=torch.int64), d_pack_part.sum(0)


class TritonInterSceneLoss(torch.autograd.Function):
    """Loss of the packed folded layers [Q, PK] on constant entries; gradients in the forward."""

    @staticmethod
    def forward(ctx, pack: Tensor, *args) -> Tuple[Tensor, Tensor]:
        loss, fire, d_pack = launch_inter_scene_kernel(pack.detach(), *args)
        ctx.save_for_backward(d_pack)
        ctx.num_args = len(args)
        ctx.mark_non_differentiable(fire)
        return loss, fire

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_fire: Optional[Tensor]):
        (d_pack,) = ctx.saved_tensors
        return (d_pack * grad_loss,) + (None,) * ctx.num_args


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
) -> Tuple[Tensor, InterSceneStats]:
    """``inter_scene_focal_loss`` with the fused kernel; CUDA tensors only (see module doc)."""
    check_triton_inputs(params, pixel_feats)
    num_coords = 2 if use_rel_coords else 0
    c_in = num_coords + pixel_feats.shape[1]
    hidden = check_three_layers(layer_shapes, c_in)
    weights, biases = fold_dynamic_params(
        params, query_anchors, query_soi, layer_shapes, use_rel_coords, torch.float32
    )
    pack = torch.cat([w.flatten(1) for w in weights] + biases, dim=1).contiguous()
    qw, pw, num_pairs = inter_scene_weights(query_images, pixel_images, normalization)
    feats = pixel_feats.detach()
    if feats.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        feats = feats.float()
    loss, fire = TritonInterSceneLoss.apply(
        pack,
        pixel_anchors.float().contiguous(),
        feats.contiguous(),
        query_images.contiguous(),
        pixel_images.contiguous(),
        qw.contiguous(),
        pw.contiguous(),
        hidden,
        c_in,
        num_coords,
        float(alpha),
        float(gamma),
    )
    return loss, InterSceneStats(num_pairs, fire.float() / num_pairs.clamp(min=1))
