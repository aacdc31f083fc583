"""The mask loss's dice terms computed a chunk of queries at a time."""

import pytest
import torch

from iuq_d2.layers.mask_dice import chunked_upsampled_dice_terms, upsampled_dice_terms
from iuq_d2.layers.upsample import aligned_bilinear


def _case(num_q=7, h=5, w=6, factor=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_q, 1, h, w, generator=g, dtype=torch.float64) * 3
    gt_masks = (torch.rand(4, h * factor, w * factor, generator=g) > 0.6).float()
    gt_inds = torch.randint(0, 4, (num_q,), generator=g)
    im_inds = torch.randint(0, 2, (num_q,), generator=g)
    valid = torch.rand(2, h, w, generator=g) > 0.3
    return logits, factor, gt_masks, gt_inds, valid, im_inds


@pytest.mark.parametrize("with_valid", [False, True])
def test_chunks_give_the_whole_batch_terms_and_gradients(with_valid):
    logits, factor, gt_masks, gt_inds, valid, im_inds = _case()
    if not with_valid:
        valid = None
    weights = torch.randn(2, 7, dtype=torch.float64)
    results = []
    # 3 queries' worth of stride-2 pixels per chunk: chunks of 3, 3 and 1.
    for terms, extra in (
        (upsampled_dice_terms, {}),
        (chunked_upsampled_dice_terms, {"chunk_pixels": 3 * 120}),
    ):
        x = logits.clone().requires_grad_(True)
        inter, union = terms(x, factor, gt_masks, gt_inds, valid, im_inds, **extra)
        (weights[0] * inter + weights[1] * union).sum().backward()
        results.append((inter.detach(), union.detach(), x.grad))
    for whole, chunked in zip(*results):
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_terms_by_hand():
    logits, factor, gt_masks, gt_inds, valid, im_inds = _case(num_q=2)
    inter, union = chunked_upsampled_dice_terms(
        logits, factor, gt_masks, gt_inds, valid, im_inds, chunk_pixels=1
    )
    probs = aligned_bilinear(logits, factor).sigmoid()[:, 0]
    cells = valid[im_inds].repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    t = gt_masks[gt_inds] * cells
    p = probs * cells
    torch.testing.assert_close(inter, (p * t).flatten(1).sum(1).float())
    torch.testing.assert_close(union, (p * p + t * t).flatten(1).sum(1).float())
