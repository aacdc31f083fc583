"""BoxInst (Tian et al., CVPR 2021): CondInst's masks trained from boxes alone.

Two losses replace CondInst's dice loss on the masks:

* the projection loss: the dice loss between the max-projections of a query's predicted mask
  and of its box's mask, onto the x axis and onto the y axis (a mask that fills its box
  exactly projects like the box);
* the pairwise loss: inside the box, a pixel and each of its neighbours (a ``size`` x ``size``
  grid of step ``dilation``, the pixel itself left out) should take the same label where their
  colours are alike: ``-log(p_i p_j + (1 - p_i)(1 - p_j))`` over the pairs whose colour
  similarity ``exp(-|lab_i - lab_j| / 2)`` is at least ``color_thresh``, ramped in linearly
  over ``warmup_iters``.

Colours are CIE L*a*b* of the image average-pooled to the mask output stride, computed here in
PyTorch on the model's device (AdelaiDet converts each image with scikit-image on the CPU), from
the same 8-bit values AdelaiDet converts. Rows at the bottom of every image (``bottom_pixels``
of the original image, AdelaiDet's COCO convention) are left out of the pairs.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Instances
from torch import Tensor

from ...layers.losses import dice_loss

# sRGB primaries (D65) to CIE XYZ, and the D65 white point of the 2-degree observer: the
# constants of the sRGB standard as scikit-image's rgb2lab uses them.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """CIE L*a*b* (D65, 2-degree observer) of sRGB images [N, 3, H, W] with values in [0, 1]."""
    rgb = rgb.float()
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    to_xyz = rgb.new_tensor(_XYZ_FROM_RGB) / rgb.new_tensor(_WHITE_D65)[:, None]
    xyz = torch.einsum("ij,njhw->nihw", to_xyz, linear)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0.0) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(dim=1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def neighbours(x: Tensor, size: int, dilation: int) -> Tensor:
    """[N, C, size * size - 1, H, W]: at every pixel of [N, C, H, W] its neighbours on a
    ``size`` x ``size`` grid of step ``dilation`` centred on it, the pixel itself left out, in
    row-major order; zero beyond the border."""
    if size % 2 != 1 or size < 3:
        raise ValueError(f"MODEL.BOXINST.PAIRWISE.SIZE must be odd and >= 3, got {size}")
    n, c, h, w = x.shape
    cols = F.unfold(x, size, dilation=dilation, padding=dilation * (size // 2))
    cols = cols.view(n, c, size * size, h, w)
    centre = size * size // 2
    return torch.cat([cols[:, :, :centre], cols[:, :, centre + 1 :]], dim=2)


def color_similarity(lab: Tensor, valid: Tensor, size: int, dilation: int) -> Tensor:
    """[N, size * size - 1, H, W]: ``exp(-|lab_i - lab_j| / 2)`` between every pixel i of
    ``lab`` [N, 3, H, W] and each of its neighbours j (see :func:`neighbours`), 0 where j is
    not ``valid`` ([N, H, W]) or beyond the border."""
    distance = (lab[:, :, None] - neighbours(lab, size, dilation)).square().sum(dim=1).sqrt()
    valid_j = neighbours(valid[:, None].to(lab.dtype), size, dilation)[:, 0]
    return torch.exp(-0.5 * distance) * valid_j


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """[G, height, width] uint8 masks of boxes [G, 4] (x0, y0, x1, y1): pixel (y, x) is inside
    when ``int(y0) <= y <= int(y1)`` and likewise in x, the pixels AdelaiDet's BoxInst fills."""
    corners = boxes.clamp(min=0).floor().long()
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows >= corners[:, 1:2]) & (rows <= corners[:, 3:4])
    in_cols = (cols >= corners[:, 0:1]) & (cols <= corners[:, 2:3])
    return (in_rows[:, :, None] & in_cols[:, None, :]).to(torch.uint8)


def projection_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """Mean over masks of the dice losses of the x and the y max-projections of mask
    probabilities [Q, 1, H, W] against those of their box masks (same shape)."""
    along_x = dice_loss(scores.amax(dim=2), targets.amax(dim=2))
    along_y = dice_loss(scores.amax(dim=3), targets.amax(dim=3))
    return (along_x + along_y).mean()


def pairwise_terms(logits: Tensor, size: int, dilation: int) -> Tensor:
    """[Q, size * size - 1, H, W]: ``-log(p_i p_j + (1 - p_i)(1 - p_j))`` between every pixel
    i of mask logits [Q, 1, H, W] and each of its neighbours j, from log-probabilities (no
    probability is rounded to 0 or 1). Beyond the border the value is meaningless (0)."""
    log_fg = F.logsigmoid(logits.float())
    log_bg = F.logsigmoid(-logits.float())
    same_fg = log_fg[:, :, None] + neighbours(log_fg, size, dilation)
    same_bg = log_bg[:, :, None] + neighbours(log_bg, size, dilation)
    return -torch.logaddexp(same_fg, same_bg)[:, 0]


def neighbour_offsets(size: int, dilation: int) -> List[Tuple[int, int]]:
    """(dy, dx) of the neighbours of :func:`neighbours`, in its order."""
    r = size // 2
    steps = [d * dilation for d in range(-r, r + 1)]
    return [(dy, dx) for dy in steps for dx in steps if (dy, dx) != (0, 0)]


def pairwise_loss(
    logits: Tensor,
    targets: Tensor,
    similarity: Tensor,
    size: int,
    dilation: int,
    thresh: float,
    gt_inds: Optional[Tensor] = None,
) -> Tensor:
    """Mean of :func:`pairwise_terms` of mask logits [Q, 1, H, W] over the pairs whose pixel i
    lies in the query's box (``targets`` [G, 1, H, W]) and whose colour ``similarity``
    ([G, size * size - 1, H, W]) is at least ``thresh``; query q's box and similarity are
    those of instance ``gt_inds[q]`` (default: instance q). 0 without such pairs.

    Only those pairs are computed (gathered per query from its instance's list), not all
    ``Q * (size * size - 1) * H * W``: the same sum, a fraction of the work, since most pixels
    lie outside a query's box or have a neighbour of another colour."""
    num_q, _, h, w = logits.shape
    if gt_inds is None:
        gt_inds = torch.arange(num_q, device=logits.device)
    weights = (similarity >= thresh) & (targets > 0)  # [G, K, H, W]
    count = weights.flatten(1).sum(dim=1)[gt_inds].sum()
    # Neighbours beyond the border have similarity 0: with thresh <= 0 they count in the
    # denominator, as zero terms, but are not gathered.
    offsets = neighbour_offsets(size, dilation)
    ys = torch.arange(h, device=logits.device)[:, None]
    xs = torch.arange(w, device=logits.device)[None, :]
    inside = torch.stack(
        [(ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w) for dy, dx in offsets]
    )
    gt, k, y, x = torch.nonzero(weights & inside).unbind(dim=1)  # sorted by instance
    shift = torch.tensor([dy * w + dx for dy, dx in offsets], device=logits.device)
    pixel = y * w + x
    neighbour = pixel + shift[k]
    # Each query takes its instance's pairs: the runs of ``gt`` equal to gt_inds[q].
    per_gt = torch.bincount(gt, minlength=weights.shape[0])
    starts = torch.cumsum(per_gt, 0) - per_gt
    per_query = per_gt[gt_inds]
    query = torch.repeat_interleave(torch.arange(num_q, device=logits.device), per_query)
    first = torch.repeat_interleave(
        starts[gt_inds] - (torch.cumsum(per_query, 0) - per_query), per_query
    )
    pair = first + torch.arange(len(query), device=logits.device)
    log_fg = F.logsigmoid(logits.float()).flatten(1)
    log_bg = F.logsigmoid(-logits.float()).flatten(1)
    i, j = pixel[pair], neighbour[pair]
    same = torch.logaddexp(log_fg[query, i] + log_fg[query, j], log_bg[query, i] + log_bg[query, j])
    return -same.sum() / count.clamp(min=1).float()


class BoxInstCriterion:
    """BoxInst's targets (box masks, colour similarity) and losses, with the knobs of
    ``MODEL.BOXINST``. Holds no parameters or state: the warm-up reads CondInst's iteration
    counter."""

    def __init__(
        self,
        *,
        bottom_pixels_removed: int,
        pairwise_size: int,
        pairwise_dilation: int,
        warmup_iters: int,
        color_thresh: float,
        input_format: str,
    ):
        if input_format not in ("BGR", "RGB"):
            raise ValueError(
                f"MODEL.BOXINST.ENABLED needs INPUT.FORMAT 'BGR' or 'RGB' (its colour "
                f"similarity is on LAB colours), got {input_format!r}"
            )
        neighbours(torch.zeros(1, 1, 1, 1), pairwise_size, pairwise_dilation)  # checks the size
        self.bottom_pixels_removed = bottom_pixels_removed
        self.size = pairwise_size
        self.dilation = pairwise_dilation
        self.warmup_iters = warmup_iters
        self.color_thresh = color_thresh
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg) -> "BoxInstCriterion":
        boxinst = cfg.MODEL.BOXINST
        return cls(
            bottom_pixels_removed=boxinst.BOTTOM_PIXELS_REMOVED,
            pairwise_size=boxinst.PAIRWISE.SIZE,
            pairwise_dilation=boxinst.PAIRWISE.DILATION,
            warmup_iters=boxinst.PAIRWISE.WARMUP_ITERS,
            color_thresh=boxinst.PAIRWISE.COLOR_THRESH,
            input_format=cfg.INPUT.FORMAT,
        )

    def image_similarity(
        self,
        images: Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        original_heights: Sequence[int],
        stride: int,
    ) -> Tensor:
        """[N, size * size - 1, H / stride, W / stride] colour similarity of the padded 8-bit
        images [N, 3, H, W] (``INPUT.FORMAT``, zero padding) at ``stride``: each image is
        average-pooled, truncated to 8 bits and converted to LAB. The last
        ``bottom_pixels_removed`` rows of each original image (as resized: ``image_sizes``
        against ``original_heights``) and the padding are not valid neighbours."""
        n, _, h, w = images.shape
        if h % stride or w % stride:
            raise ValueError(
                f"padded images of {h}x{w} are not a multiple of MASK_OUT_STRIDE {stride}"
            )
        valid = torch.zeros((n, h, w), device=images.device)
        for i, ((im_h, im_w), original_h) in enumerate(zip(image_sizes, original_heights)):
            removed = max(int(self.bottom_pixels_removed * float(im_h) / float(original_h)), 0)
            valid[i, : max(im_h - removed, 0), :im_w] = 1.0
        pooled = F.avg_pool2d(images.float(), stride, stride).floor()
        if self.input_format == "BGR":
            pooled = pooled.flip(1)
        start = stride // 2
        valid = valid[:, start::stride, start::stride]
        return color_similarity(rgb_to_lab(pooled / 255.0), valid, self.size, self.dilation)

    def add_targets(
        self,
        gt_instances: List[Instances],
        images: Tensor,
        image_sizes: Sequence[Tuple[int, int]],
        original_heights: Sequence[int],
        stride: int,
    ) -> None:
        """Give every image's instances ``gt_bitmasks_full`` [G, H, W] (uint8) and
        ``gt_bitmasks`` [G, H / stride, W / stride] (float, at the centres of the stride's
        cells): their boxes' masks on the padded canvas of ``images``; and
        ``image_color_similarity`` [G, size * size - 1, H / stride, W / stride], their image's
        (a view, not a copy per instance)."""
        h, w = images.shape[-2:]
        similarity = self.image_similarity(images, image_sizes, original_heights, stride)
        start = stride // 2
        for index, inst in enumerate(gt_instances):
            full = box_masks(inst.gt_boxes.tensor, h, w)
            inst.gt_bitmasks_full = full
            inst.gt_bitmasks = full[:, start::stride, start::stride].float()
            inst.image_color_similarity = similarity[index].expand(len(inst), -1, -1, -1)

    def losses(
        self, logits: Tensor, gt_inds: Tensor, gt_instances: List[Instances], iteration: Tensor
    ) -> Dict[str, Tensor]:
        """``loss_prj`` and ``loss_pairwise`` of mask logits [Q, 1, H, W] (at the mask output
        stride) of queries of instances ``gt_inds``; the pairwise loss weighted by
        ``(iteration + 1) / warmup_iters`` up to 1 (``iteration``: the training forwards
        before this one, a tensor, so that reading it does not wait for the device)."""
        targets = torch.cat([x.gt_bitmasks for x in gt_instances]).unsqueeze(1)
        similarity = torch.cat([x.image_color_similarity for x in gt_instances])
        loss_prj = projection_loss(logits.float().sigmoid(), targets[gt_inds])
        loss_pairwise = pairwise_loss(
            logits, targets, similarity, self.size, self.dilation, self.color_thresh, gt_inds
        )
        if self.warmup_iters > 0:
            ramp = ((iteration.float() + 1.0) / self.warmup_iters).clamp(max=1.0)
            loss_pairwise = loss_pairwise * ramp.reshape(())
        return {"loss_prj": loss_prj, "loss_pairwise": loss_pairwise}
