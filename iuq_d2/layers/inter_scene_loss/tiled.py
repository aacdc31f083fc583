"""The inter-scene focal loss in chunks of entries, its gradients computed during the forward.

The reference keeps several [Q, hidden, N] activations alive for autograd; at Q=500 queries and
N=16k entries that is gigabytes. Like Liger-Kernel's fused losses, this path walks over the
entries in chunks of T, runs the dynamic MLP forward *and* its hand-written backward on each
chunk, and accumulates d loss / d layers. Only those gradients are saved, so memory is
O(Q * P) plus one chunk; the autograd backward just scales them by the incoming gradient.
Plain PyTorch, so it runs on any device (CPU in CI).
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..dynamic_mlp import autocast_off, compute_dtype, fold_dynamic_params
from .pairs import InterSceneStats, entry_inputs, focal_and_grad, inter_scene_weights

# Floats in one [Q, hidden, T] chunk (1 MiB in fp32). Measured on one CPU thread, entries
# interleaved in one process: 33 ns per pair at 2^18 against 41 at 2^20 and 46 at 2^16, at the
# demo's Q=64, N=4600 and at Q=200, N=8192 alike (the chunk's workspace then stays in cache).
DEFAULT_CHUNK_ELEMS = 1 << 18


def _chunk_size(num_queries: int, hidden: int, num_entries: int, chunk_elems: int) -> int:
    return max(1, min(num_entries, chunk_elems // max(1, num_queries * hidden)))


class TiledInterSceneLoss(torch.autograd.Function):
    """Weighted focal loss of the folded dynamic MLPs over all (query, entry) pairs.

    Inputs: entry inputs [N, C_in] (constants), query/entry image ids, query/entry weights, the
    focal constants, the chunk size, then the layers' weights and biases
    (``fold_dynamic_params``). Outputs: the loss and the number of firing valid pairs.
    """

    @staticmethod
    def forward(ctx, inputs: Tensor, *args) -> Tuple[Tensor, Tensor]:
        with autocast_off(inputs.device):
            return TiledInterSceneLoss._forward(ctx, inputs, *args)

    @staticmethod
    def _forward(
        ctx,
        inputs: Tensor,
        query_images: Tensor,
        pixel_images: Tensor,
        qw: Tensor,
        pw: Tensor,
        alpha: float,
        gamma: float,
        chunk: int,
        *layers: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        dtype = compute_dtype(inputs, *layers)
        num_layers = len(layers) // 2
        weights = [w.detach().to(dtype) for w in layers[:num_layers]]
        biases = [b.detach().to(dtype) for b in layers[num_layers:]]
        x_all = inputs.detach().to(dtype)
        qw, pw = qw.to(dtype), pw.to(dtype)
        num_q, hidden, c_in = weights[0].shape
        num_n = x_all.shape[0]

        d_weights = [torch.zeros_like(w) for w in weights[1:]]
        d_biases = [torch.zeros_like(b) for b in biases]
        # First-layer weight gradient kept transposed: x^T g^T is ~3x faster on CPU than g x
        # (MKL with the long reduction over T as the inner dimension of both operands).
        d_w0_t = weights[0].new_zeros(c_in, num_q * hidden)
        total = torch.zeros((), dtype=dtype, device=x_all.device)
        firing = torch.zeros((), dtype=torch.int64, device=x_all.device)
        w0_flat = weights[0].reshape(num_q * hidden, c_in)
        b0_col = biases[0].reshape(-1, 1)
        step = chunk if num_q else max(num_n, 1)  # no query: nothing to evaluate
        # One workspace reused by every chunk (out= / in-place ops): fresh [Q, hidden, T]
        # tensors per chunk cost more in first-touch page faults than the math itself.
        widths = [w.shape[1] for w in weights]
        slots = num_layers + 1  # hidden activations, logits, two gradient buffers
        workspace = x_all.new_empty(slots, num_q * max(widths) * min(step, max(num_n, 1)))

        def buffer(slot: int, rows: int, t: int) -> Tensor:
            return workspace[slot, : num_q * rows * t].view(num_q, rows, t)

        for start in range(0, num_n if num_q else 0, step):
            x_in = x_all[start : start + step]
            t = x_in.shape[0]
            # Forward, keeping only the post-ReLU activations (ReLU' = [act > 0]).
            acts: List[Tensor] = []
            x = buffer(0, hidden, t)
            torch.addmm(b0_col, w0_flat, x_in.t(), out=x.view(num_q * hidden, t))
            for layer in range(1, num_layers):
                acts.append(x.relu_())
                out = buffer(layer, widths[layer], t) if layer < num_layers - 1 else None
                x = torch.baddbmm(biases[layer][:, :, None], weights[layer], x, out=out)
            loss, grad, prob = focal_and_grad(x[:, 0, :], alpha, gamma)
            valid = query_images[:, None] != pixel_images[None, start : start + t]
            pair_w = (qw[:, None] * pw[None, start : start + t]).masked_fill_(~valid, 0.0)
            total += (loss * pair_w).sum()
            firing += ((prob > 0.5) & valid).sum()
            # Backward through the layers, accumulating the weight gradients.
            g = grad.mul_(pair_w)[:, None, :]  # [Q, 1, T]
            for layer in range(num_layers - 1, 0, -1):
                act, w = acts[layer - 1], weights[layer]
                d_weights[layer - 1].baddbmm_(g, act.transpose(1, 2))
                d_biases[layer] += g.sum(2)
                out = buffer(num_layers - 1 + layer % 2, w.shape[2], t)
                if w.shape[1] == 1:  # one output: the backward is an outer product, not a GEMM
                    g = torch.mul(w.transpose(1, 2), g, out=out)
                else:
                    g = torch.bmm(w.transpose(1, 2), g, out=out)
                torch.ops.aten.threshold_backward.grad_input(g, act, 0, grad_input=g)
            d_w0_t.addmm_(x_in.t(), g.reshape(num_q * hidden, t).t())
            d_biases[0] += g.sum(2)
        d_weights.insert(0, d_w0_t.t().reshape(num_q, hidden, c_in))

        ctx.layer_dtypes = [t.dtype for t in layers]
        ctx.save_for_backward(*d_weights, *d_biases)
        ctx.mark_non_differentiable(firing)
        return total, firing

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_firing: Optional[Tensor]):
        d_layers = [(g * grad_loss).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.layer_dtypes)]
        return (None,) * 8 + tuple(d_layers)


def tiled_inter_scene_focal_loss(
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
    chunk_elems: Optional[int] = None,
) -> Tuple[Tensor, InterSceneStats]:
    """``inter_scene_focal_loss`` in chunks of entries; see the module docstring."""
    dtype = compute_dtype(params, pixel_feats)
    weights, biases = fold_dynamic_params(
        params, query_anchors, query_soi, layer_shapes, use_rel_coords, dtype
    )
    inputs = entry_inputs(pixel_feats, pixel_anchors, use_rel_coords, dtype)
    qw, pw, num_pairs = inter_scene_weights(query_images, pixel_images, normalization, dtype)
    num_q, hidden = weights[0].shape[:2]
    hidden = max([hidden] + [w.shape[1] for w in weights[1:]])
    chunk = _chunk_size(num_q, hidden, inputs.shape[0], chunk_elems or DEFAULT_CHUNK_ELEMS)
    total, firing = TiledInterSceneLoss.apply(
        inputs,
        query_images,
        pixel_images,
        qw,
        pw,
        float(alpha),
        float(gamma),
        chunk,
        *weights,
        *biases,
    )
    frac = firing.float() / num_pairs.clamp(min=1)
    if params.dtype != torch.float64:
        total = total.float()  # the reference's loss dtype
    return total, InterSceneStats(num_pairs, frac)
