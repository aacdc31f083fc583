"""The dense mask head in chunks of queries, activations recomputed in the backward.

Queries are grouped by image and run on the image's shared [2 + C, HW] inputs (the relative
coordinates folded into the first layer, ``fold_dynamic_params``), so memory is O(Q * HW) for
the logits plus one chunk of activations; plain PyTorch, any device.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cell_centers import fcos_cell_centers
from ..dynamic_mlp import autocast_off, compute_dtype, fold_dynamic_params
from .common import image_segments

# Floats in one [queries, hidden, HW] chunk (2 MiB in fp32). One CPU thread, forward and
# backward: 7.3 ms at 2^19 against 8.8 at 2^20 for the demo's 200 queries on 24x32 maps, and
# 205 against 230 ms for 500 queries on R-50's 100x136.
DEFAULT_CHUNK_ELEMS = 1 << 19


def _grid_center(height: int, width: int, stride: int) -> Tuple[int, int]:
    """A cell centre near the middle of the map. Subtracting it from locations and cell centres
    (exactly, for integer-valued coordinates) halves the magnitudes that the folded first layer
    cancels, so the tiled path's rounding stays close to the reference's."""
    return (width // 2) * stride + stride // 2, (height // 2) * stride + stride // 2


class TiledDenseMaskHead(torch.autograd.Function):
    """Folded dynamic MLPs (``fold_dynamic_params``) on shared per-image inputs.

    Inputs: mask features [B, C, HW], the cell centres [2, HW] (``None`` without relative
    coordinates), ``order`` (queries sorted by image), the image bounds in that order, the
    queries per chunk, then the layers' weights and biases in *sorted* order. Output: [Q, HW]
    logits in the original query order. Saves only the inputs: the backward recomputes each
    chunk's activations (activation checkpointing).
    """

    @staticmethod
    def forward(ctx, mask_feats: Tensor, *args) -> Tensor:
        with autocast_off(mask_feats.device):
            return TiledDenseMaskHead._forward(ctx, mask_feats, *args)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        with autocast_off(grad_out.device):
            return TiledDenseMaskHead._backward(ctx, grad_out)

    @staticmethod
    def _forward(
        ctx,
        mask_feats: Tensor,
        coords: Optional[Tensor],
        order: Tensor,
        bounds: List[int],
        chunk: int,
        *layers: Tensor,
    ) -> Tensor:
        dtype = compute_dtype(mask_feats, *layers)
        num_layers = len(layers) // 2
        weights = [w.detach().to(dtype) for w in layers[:num_layers]]
        biases = [b.detach().to(dtype) for b in layers[num_layers:]]
        num_q, hw = order.numel(), mask_feats.shape[2]
        out = mask_feats.new_empty(num_q, hw, dtype=dtype)
        runner = _ChunkRunner(mask_feats.detach(), coords, weights, biases, chunk, dtype)
        for image, lo, hi in _chunks(bounds, chunk):
            x_img = runner.image_inputs(image)  # cached: recomputed once per image
            _, logits = runner.forward(x_img, lo, hi)
            out.index_copy_(0, order[lo:hi], logits[:, 0, :])
        ctx.save_for_backward(mask_feats, order, *layers)
        ctx.coords, ctx.bounds, ctx.chunk = coords, bounds, chunk
        return out.to(torch.promote_types(mask_feats.dtype, layers[0].dtype))

    @staticmethod
    def _backward(ctx, grad_out: Tensor):
        mask_feats, order, *layers = ctx.saved_tensors
        need_feats = ctx.needs_input_grad[0]
        dtype = compute_dtype(mask_feats, *layers)
        num_layers = len(layers) // 2
        weights = [w.detach().to(dtype) for w in layers[:num_layers]]
        biases = [b.detach().to(dtype) for b in layers[num_layers:]]
        d_weights = [torch.zeros_like(w) for w in weights]
        d_biases = [torch.zeros_like(b) for b in biases]
        d_feats = torch.zeros_like(mask_feats, dtype=dtype) if need_feats else None
        grad_out = grad_out.to(dtype)
        runner = _ChunkRunner(mask_feats, ctx.coords, weights, biases, ctx.chunk, dtype)
        num_coords = 0 if ctx.coords is None else ctx.coords.shape[0]
        for image, lo, hi in _chunks(ctx.bounds, ctx.chunk):
            x_img = runner.image_inputs(image)  # cached: recomputed once per image
            acts, _ = runner.forward(x_img, lo, hi)
            g = grad_out.index_select(0, order[lo:hi])[:, None, :]  # [n, 1, HW]
            g_flat = runner.backward(acts, g, x_img, lo, hi, d_weights, d_biases)
            if need_feats:
                w0 = weights[0][lo:hi].reshape(g_flat.shape[0], -1)[:, num_coords:]
                d_feats[image].addmm_(w0.t(), g_flat)
        d_layers = [d.to(t.dtype) for d, t in zip(d_weights + d_biases, layers)]
        d_feats = d_feats.to(mask_feats.dtype) if need_feats else None
        return (d_feats, None, None, None, None, *d_layers)


def _chunks(bounds: List[int], chunk: int):
    """(image, lo, hi) runs of at most ``chunk`` sorted queries, each within one image."""
    for image in range(len(bounds) - 1):
        for lo in range(bounds[image], bounds[image + 1], chunk):
            yield image, lo, min(lo + chunk, bounds[image + 1])


class _ChunkRunner:
    """The per-chunk forward and hand-written backward, on one reused workspace (fresh
    [n, hidden, HW] tensors per chunk cost more in first-touch page faults than the math)."""

    def __init__(self, mask_feats, coords, weights, biases, chunk, dtype):
        self.feats, self.coords, self.dtype = mask_feats, coords, dtype
        self.weights, self.biases = weights, biases
        self.widths = [w.shape[1] for w in weights]
        hw = mask_feats.shape[2]
        num_q = weights[0].shape[0]
        rows = min(chunk, num_q) * max(self.widths + [w.shape[2] for w in weights[1:]])
        # Hidden activations and logits, then two gradient buffers.
        slots = len(weights) + 2
        self.workspace = mask_feats.new_empty(slots, rows * hw if num_q else 0, dtype=dtype)
        self._image: Optional[int] = None
        self._inputs: Optional[Tensor] = None

    def buffer(self, slot: int, n: int, rows: int) -> Tensor:
        hw = self.feats.shape[2]
        return self.workspace[slot, : n * rows * hw].view(n, rows, hw)

    def image_inputs(self, image: int) -> Tensor:
        """[C_in, HW] inputs shared by the image's queries: ``[coords, feats]`` or ``feats``
        (the last image's kept: chunks come image by image)."""
        if self._image != image:
            feats = self.feats[image].to(self.dtype)
            if self.coords is not None:
                feats = torch.cat([self.coords.to(self.dtype), feats], dim=0)
            self._image, self._inputs = image, feats
        return self._inputs

    def forward(self, x_img: Tensor, lo: int, hi: int) -> Tuple[List[Tensor], Tensor]:
        """Post-ReLU hidden activations and the logits [n, 1, HW] of sorted queries lo:hi."""
        n, num_layers = hi - lo, len(self.weights)
        w0 = self.weights[0][lo:hi]
        x = self.buffer(0, n, self.widths[0])
        torch.addmm(
            self.biases[0][lo:hi].reshape(-1, 1),
            w0.reshape(-1, w0.shape[2]),
            x_img,
            out=x.view(n * self.widths[0], -1),
        )
        acts = []
        for layer in range(1, num_layers):
            acts.append(x.relu_())
            out = self.buffer(layer, n, self.widths[layer])
            x = torch.baddbmm(
                self.biases[layer][lo:hi, :, None], self.weights[layer][lo:hi], x, out=out
            )
        return acts, x

    def backward(self, acts, g, x_img, lo, hi, d_weights, d_biases) -> Tensor:
        """Back through the layers from d logits ``g`` [n, 1, HW]; writes the chunk's rows of
        the layer gradients and returns d (first-layer output) [n * hidden, HW]."""
        n, num_layers = hi - lo, len(self.weights)
        for layer in range(num_layers - 1, 0, -1):
            act, w = acts[layer - 1], self.weights[layer][lo:hi]
            torch.bmm(g, act.transpose(1, 2), out=d_weights[layer][lo:hi])
            torch.sum(g, 2, out=d_biases[layer][lo:hi])
            out = self.buffer(num_layers + layer % 2, n, w.shape[2])
            if w.shape[1] == 1:  # one output: the backward is an outer product, not a GEMM
                g = torch.mul(w.transpose(1, 2), g, out=out)
            else:
                g = torch.bmm(w.transpose(1, 2), g, out=out)
            torch.ops.aten.threshold_backward.grad_input(g, act, 0, grad_input=g)
        g_flat = g.reshape(n * self.widths[0], -1)
        torch.mm(g_flat, x_img.t(), out=d_weights[0][lo:hi].view(g_flat.shape[0], -1))
        torch.sum(g, 2, out=d_biases[0][lo:hi])
        return g_flat


def _chunk_queries(num_queries: int, hidden: int, hw: int, chunk_elems: int) -> int:
    return max(1, min(max(num_queries, 1), chunk_elems // max(1, hidden * hw)))


def tiled_dense_mask_logits(
    mask_feats: Tensor,
    params: Tensor,
    im_inds: Tensor,
    locations: Tensor,
    soi: Tensor,
    stride: int,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
    chunk_elems: Optional[int] = None,
) -> Tensor:
    """``dense_mask_logits`` in chunks of queries; see ``TiledDenseMaskHead``."""
    num_images, channels, h, w = mask_feats.shape
    num_q = params.shape[0]
    dtype = compute_dtype(params, mask_feats)
    coords = None
    anchors = locations
    if use_rel_coords:
        cx, cy = _grid_center(h, w, stride)
        center = torch.tensor([cx, cy], dtype=torch.float32, device=mask_feats.device)
        coords = (fcos_cell_centers(h, w, stride, mask_feats.device) - center).t().contiguous()
        anchors = locations.float() - center
    weights, biases = fold_dynamic_params(
        params, anchors, soi.float(), layer_shapes, use_rel_coords, dtype
    )
    order, bounds = image_segments(im_inds, num_images)
    layers = [t.index_select(0, order) for t in weights + biases]
    hidden = max(o for o, _ in layer_shapes)
    chunk = _chunk_queries(num_q, hidden, h * w, chunk_elems or DEFAULT_CHUNK_ELEMS)
    out = TiledDenseMaskHead.apply(
        mask_feats.reshape(num_images, channels, h * w), coords, order, bounds, chunk, *layers
    )
    return out.to(torch.promote_types(mask_feats.dtype, params.dtype)).reshape(num_q, 1, h, w)
