"""What every implementation of the inter-scene loss shares: the pair weights, the entry side of
the folded first layer and the focal term against 0."""

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

NORMALIZATIONS = ("pairs", "query_image")


@dataclass
class InterSceneStats:
    num_pairs: Tensor  # valid (query, pixel) pairs
    frac_firing: Tensor  # fraction of valid pairs with probability > 0.5


def inter_scene_weights(
    query_images: Tensor,
    pixel_images: Tensor,
    normalization: str = "pairs",
    dtype: torch.dtype = torch.float32,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-query weights [Q] and per-entry weights [N] that make the loss one weighted sum.

    ``loss = sum_{q,n} qw[q] * pw[n] * [img_q != img_n] * focal(q, n)``. Factorising the
    normalisation this way costs O(Q + N) and lets every implementation stream over pairs.

    * ``"pairs"``: the mean over valid pairs (qw = 1 / #valid pairs, pw = 1).
    * ``"query_image"`` (the paper's): per query, the mean over each other image's entries,
      then over those images, then over the queries that have any: pw[n] = 1 / #entries of n's
      image and qw[q] = 1 / (#queries with a valid pair * #entry images other than q's).

    Returns:
        qw, pw and the number of valid pairs (int64 scalar).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    query_images, pixel_images = query_images.reshape(-1), pixel_images.reshape(-1)
    num_q, num_n = query_images.numel(), pixel_images.numel()
    device = pixel_images.device
    # Entries per image, counted by searching the sorted ids: no host sync (torch.unique and
    # bincount's size would need one).
    sorted_ids = torch.sort(pixel_images).values

    def entries_of(ids: Tensor) -> Tensor:
        right = torch.searchsorted(sorted_ids, ids, right=True)
        return right - torch.searchsorted(sorted_ids, ids)

    q_count = entries_of(query_images)  # entries of each query's own image
    num_pairs = num_q * num_n - q_count.sum()
    if normalization == "pairs":
        qw = (1.0 / num_pairs.clamp(min=1).to(dtype)).expand(num_q).contiguous()
        pw = torch.ones(num_n, dtype=dtype, device=device)
    else:
        pw = 1.0 / entries_of(pixel_images).to(dtype)
        entry_images = (sorted_ids[1:] != sorted_ids[:-1]).sum() + int(num_n > 0)
        others = entry_images - (q_count > 0).long()  # other images with entries
        has_other = others > 0
        denom = (has_other.sum().clamp(min=1) * others.clamp(min=1)).to(dtype)
        qw = torch.where(has_other, 1.0 / denom, torch.zeros((), dtype=dtype, device=device))
    return qw, pw, num_pairs


def entry_inputs(
    pixel_feats: Tensor, pixel_anchors: Tensor, use_rel_coords: bool, dtype: torch.dtype
) -> Tensor:
    """[N, C_in] entry side of the folded first layer: ``[anchors, feats]`` or ``feats``."""
    inputs = pixel_feats.to(dtype)
    if use_rel_coords:
        inputs = torch.cat([pixel_anchors.to(dtype), inputs], dim=1)
    return inputs


def focal_loss_target0(logits: Tensor, alpha: float, gamma: float) -> Tensor:
    """(1 - alpha) * p^gamma * -log(1 - p), with -log(1 - p) = softplus(x)."""
    return (1.0 - alpha) * logits.sigmoid().pow(gamma) * F.softplus(logits)


def softplus_from_prob(logits: Tensor, prob: Tensor) -> Tensor:
    """softplus(x) = relu(x) - log(sigmoid(|x|)), reusing p = sigmoid(x).

    Same value as ``F.softplus`` to fp32 rounding, but torch's CPU softplus/log1p are scalar
    loops (~10x slower than ``log2``), and this term dominated the tiled path's elementwise time.
    """
    if logits.dtype == torch.float64:
        return F.softplus(logits)
    sig_abs = torch.where(logits >= 0, prob, 1.0 - prob)
    return torch.log2(sig_abs).mul_(-math.log(2.0)).add_(logits.clamp(min=0))


def focal_and_grad(logits: Tensor, alpha: float, gamma: float) -> Tuple[Tensor, Tensor, Tensor]:
    """Focal loss against 0, its derivative in the logit, and the probability.

    With p = sigmoid(x) and softplus' = p: d/dx [(1-a) p^g sp(x)] = (1-a) p^g (g (1-p) sp + p),
    which needs no p^(g-1) (finite at p = 0 for any g >= 0).
    """
    prob = logits.sigmoid()
    soft = softplus_from_prob(logits, prob)
    prob_g = prob * prob if gamma == 2.0 else prob.pow(gamma)
    scale = prob_g.mul_(1.0 - alpha)
    grad = (1.0 - prob).mul_(gamma).mul_(soft).add_(prob).mul_(scale)
    return scale.mul_(soft), grad, prob
