"""Losses shared by the FCOS head, the CondInst mask head and the IUQ terms."""

from typing import Tuple

import torch
from torch import Tensor

DICE_EPS = 1e-5


def dice_terms(probs: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-instance numerator ``|x*t|`` and denominator ``|x|^2 + |t|^2`` of the dice loss,
    for losses that add to the denominator (IUQ's dice-form inter-scene loss).

    Args:
        probs: [N, ...] mask probabilities.
        targets: [N, ...] binary targets of the same shape.
    Returns:
        two [N] tensors, computed in float32 so that AMP cannot overflow the sums.
    """
    probs = probs.flatten(1).float()
    targets = targets.flatten(1).float()
    inter = (probs * targets).sum(dim=1)
    union = (probs * probs).sum(dim=1) + (targets * targets).sum(dim=1)
    return inter, union


def dice_from_terms(inter: Tensor, union: Tensor, eps: float = DICE_EPS) -> Tensor:
    return 1.0 - 2.0 * inter / (union + eps)


def dice_loss(probs: Tensor, targets: Tensor, eps: float = DICE_EPS) -> Tensor:
    """[N] per-instance dice loss ``1 - 2|x*t| / (|x|^2 + |t|^2)`` (see ``dice_terms``)."""
    return dice_from_terms(*dice_terms(probs, targets), eps)


def ltrb_iou_loss(pred: Tensor, target: Tensor, loss_type: str = "giou") -> Tensor:
    """IoU or GIoU loss between boxes given as distances (left, top, right, bottom) from a
    shared anchor point, the form FCOS regresses.

    Args:
        pred, target: [N, 4] non-negative distances.
    Returns:
        [N] losses.
    """
    pred = pred.float()
    target = target.float()
    pl, pt, pr, pb = pred.unbind(dim=1)
    tl, tt, tr, tb = target.unbind(dim=1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter_w = torch.min(pl, tl) + torch.min(pr, tr)
    inter_h = torch.min(pt, tt) + torch.min(pb, tb)
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    union = pred_area + target_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    if loss_type == "iou":
        return -torch.log(iou)
    if loss_type == "giou":
        enclose = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pt, tt) + torch.max(pb, tb))
        giou = iou - (enclose - union) / (enclose + 1e-7)
        return 1.0 - giou
    raise ValueError(f"MODEL.FCOS.LOC_LOSS_TYPE must be 'iou' or 'giou', got {loss_type!r}")
