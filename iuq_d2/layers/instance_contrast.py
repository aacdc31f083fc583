"""Supervised contrastive loss over pixel embeddings labelled by instance."""

from typing import Optional

import torch
from torch import Tensor


def instance_contrast_loss(
    anchors: Tensor,
    keys: Tensor,
    anchor_instances: Tensor,
    key_instances: Tensor,
    temperature: float,
    key_mask: Optional[Tensor] = None,
    anchor_key_index: Optional[Tensor] = None,
) -> Tensor:
    """Mean over anchors of the supervised contrastive loss (Khosla et al., 2020): for an anchor
    a with embedding e_a (L2-normalised, as the keys), -mean over its positives p of
    log(exp(e_a.e_p / t) / sum over its candidates k of exp(e_a.e_k / t)).

    Args:
        anchors: [A, D] and keys: [K, D], unit vectors.
        anchor_instances: [A] and key_instances: [K]: the instance each belongs to; keys of the
            anchor's instance are its positives.
        key_mask: [A, K] bool, the keys that may stand in an anchor's denominator besides its
            positives (default: all of them).
        anchor_key_index: [A]: the key that is the anchor itself (-1 for none), left out.

    Anchors without a positive key add nothing; with none at all the loss is 0 (attached to
    the inputs, so that every rank's backward sees the same graph).
    """
    logits = anchors @ keys.t() / temperature
    positive = anchor_instances[:, None] == key_instances[None, :]
    candidate = torch.ones_like(positive) if key_mask is None else positive | key_mask
    if anchor_key_index is not None:
        is_self = torch.zeros_like(positive)
        rows = torch.nonzero(anchor_key_index >= 0).squeeze(1)
        is_self[rows, anchor_key_index[rows]] = True
        positive = positive & ~is_self
        candidate = candidate & ~is_self
    log_denominator = torch.logsumexp(logits.masked_fill(~candidate, float("-inf")), dim=1)
    num_positives = positive.sum(dim=1)
    has_positive = num_positives > 0
    if not has_positive.any():
        return (anchors.sum() + keys.sum()) * 0.0
    # Every anchor with a positive has a finite denominator (the positive is a candidate).
    log_prob = logits[has_positive] - log_denominator[has_positive, None]
    per_anchor = -(log_prob * positive[has_positive]).sum(dim=1) / num_positives[has_positive]
    return per_anchor.mean()
