"""The mask loss's dice terms from feature-stride logits, a chunk of queries at a time.

CondInst scores each query's mask at ``mask_out_stride`` (4): the head's stride-8 logits are
upsampled, passed through a sigmoid and compared with the query's ground-truth bitmask. At 800
pixels and 500 queries each of those [Q, 1, H/4, W/4] maps is ~110 MB, and autograd keeps
several of them (the probabilities, the gathered targets, their products) until the backward:
more than the dense head's own activations. ``chunked_upsampled_dice_terms`` computes the same
per-query sums with ``torch.utils.checkpoint`` over chunks of queries, so that only one chunk's
stride-4 maps exist at a time; the backward recomputes them from the small stride-8 logits.
Each query's numbers are computed by the same operations as on the whole batch.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .losses import dice_terms
from .upsample import aligned_bilinear

DEFAULT_CHUNK_PIXELS = 1 << 22  # stride-4 mask pixels per chunk (16 MiB per fp32 map)


def upsampled_dice_terms(
    logits: Tensor,
    factor: int,
    gt_masks: Tensor,
    gt_inds: Tensor,
    valid: Optional[Tensor] = None,
    im_inds: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """``dice_terms`` of ``sigmoid(aligned_bilinear(logits, factor))`` against
    ``gt_masks[gt_inds]``.

    Args:
        logits: [Q, 1, h, w] mask logits at the features' stride.
        gt_masks: [G, h * factor, w * factor] ground-truth bitmasks of the batch's instances.
        gt_inds: [Q] instance of each query.
        valid: optional [B, h, w] bool; only these cells of each query's image (``im_inds``)
            count, on both sides.
    """
    probs = aligned_bilinear(logits, factor).sigmoid()
    targets = gt_masks[gt_inds].unsqueeze(1).to(probs.dtype)
    if valid is not None:
        cells = valid[im_inds].repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
        cells = cells.unsqueeze(1).to(probs.dtype)
        probs, targets = probs * cells, targets * cells
    return dice_terms(probs, targets)


def chunked_upsampled_dice_terms(
    logits: Tensor,
    factor: int,
    gt_masks: Tensor,
    gt_inds: Tensor,
    valid: Optional[Tensor] = None,
    im_inds: Optional[Tensor] = None,
    chunk_pixels: int = DEFAULT_CHUNK_PIXELS,
) -> Tuple[Tensor, Tensor]:
    """``upsampled_dice_terms`` with the stride-``factor`` maps of at most ``chunk_pixels``
    pixels alive at once (recomputed per chunk in the backward)."""
    num_q = logits.shape[0]
    pixels = max(1, gt_masks.shape[-2] * gt_masks.shape[-1])
    chunk = max(1, chunk_pixels // pixels)
    if num_q <= chunk or not torch.is_grad_enabled():
        return upsampled_dice_terms(logits, factor, gt_masks, gt_inds, valid, im_inds)
    inters, unions = [], []
    for lo in range(0, num_q, chunk):
        hi = min(lo + chunk, num_q)
        part_im = None if im_inds is None else im_inds[lo:hi]
        inter, union = checkpoint(
            upsampled_dice_terms,
            logits[lo:hi],
            factor,
            gt_masks,
            gt_inds[lo:hi],
            valid,
            part_im,
            use_reentrant=False,
        )
        inters.append(inter)
        unions.append(union)
    return torch.cat(inters), torch.cat(unions)
