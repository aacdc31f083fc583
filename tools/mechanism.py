"""Measurements of the mechanism IUQ trains, beside the AP it is judged by.

IUQ claims that a query's dynamic mask head stays silent on the instances of other images
(inter-scene uniqueness) and that masks get sharper. Each is measured here from a model and
validation images:

* :func:`false_firing`: the heads of one image's detections applied to the mask features F of
  other images, at their own position and moved onto each instance of the other image;
* :func:`mask_sharpness` (and :func:`coco_mask_ap`): mask probability inside vs outside the
  ground truth of matched detections;
* :func:`feature_identity`: whether F itself tells instances apart, in one image and across
  images.

Images go through the model once (:func:`encode_image`); the functions work on the results.
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import ImageList, Instances, pairwise_iou
from torch import Tensor

from iuq_d2.data.mapper import CondInstDatasetMapper
from iuq_d2.layers.inter_scene_loss import focal_and_grad
from iuq_d2.modeling.condinst import CondInst
from iuq_d2.modeling.condinst.dynamic_mask_head import DynamicMaskHead
from iuq_d2.modeling.iuq.inter_scene import cell_masks

__all__ = [
    "EncodedImage",
    "FiringStats",
    "IdentityStats",
    "SharpnessStats",
    "coco_mask_ap",
    "confident",
    "encode_image",
    "false_firing",
    "feature_identity",
    "map_for_evaluation",
    "mask_sharpness",
]

# MODEL.IUQ.INTER.FOCAL_ALPHA/GAMMA's defaults: the loss whose gradient share is measured.
_DEFAULT_FOCAL_ALPHA, _DEFAULT_FOCAL_GAMMA = 0.25, 2.0


@dataclass
class EncodedImage:
    """One image after a single pass through the model: F, every detection with its mask
    probabilities, and the ground truth rasterised as CondInst's training targets, so that
    masks and targets share the stride-MASK_OUT_STRIDE grid of the padded canvas."""

    image_id: int
    mask_feats: Tensor  # [1, C, H/8, W/8] on the padded canvas
    detections: Instances  # FCOS fields, mask_head_params, pred_global_masks [D, 1, H', W']
    gt: Instances  # gt_boxes, gt_classes, gt_bitmasks [G, H', W'] (float 0/1)
    padded_size: Tuple[int, int]
    output_size: Tuple[int, int]  # the dataset's (height, width), which COCO evaluates at


def map_for_evaluation(
    mapper: CondInstDatasetMapper, dataset_dict: dict, resize: bool = True
) -> dict:
    """The model input of a dataset dict with its ground truth ``instances`` in the same frame.

    A test mapper drops annotations; these measurements need them on the test-time canvas
    (``resize``, the mapper's test augmentation) or on the original image (no transform).
    """
    d = dict(dataset_dict)
    image = mapper.load_image(d)
    transforms = T.TransformList([])
    if resize:
        image, transforms = mapper.augment(image)
    d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    d["instances"] = mapper.annotations_to_instances(
        d.pop("annotations", []), transforms, image.shape[:2]
    )
    return d


def _features(model: CondInst, inputs: dict) -> Tuple[ImageList, Dict[str, Tensor], Tensor]:
    images = model.preprocess_image([inputs])
    features = model.backbone(images.tensor)
    mask_feats, _ = model.mask_branch(features)
    return images, features, mask_feats


@torch.no_grad()
def encode_image(model: CondInst, inputs: dict) -> EncodedImage:
    """As ``CondInst.inference`` on a batch of one, keeping F and the ground truth.

    One image per pass: images of different sizes then need no padding to a common canvas,
    whose extra cells would enter the other images' measurements.
    """
    images, features, mask_feats = _features(model, inputs)
    (det,), _ = model.proposal_generator(images, features, None, model.controller)
    det.im_inds = torch.zeros_like(det.pred_classes)
    det.pred_global_masks = model.mask_head(mask_feats, model.mask_branch.out_stride, det).sigmoid()
    (gt,) = model.prepare_targets([inputs], images)
    h, w = images.image_sizes[0]
    return EncodedImage(
        image_id=inputs.get("image_id", -1),
        mask_feats=mask_feats,
        detections=det,
        gt=gt,
        padded_size=tuple(images.tensor.shape[-2:]),
        output_size=(inputs.get("height", h), inputs.get("width", w)),
    )


def confident(detections: Instances, score_thresh: float, max_per_image: int) -> Instances:
    """The at most ``max_per_image`` best detections scoring at least ``score_thresh``: the
    ones a user would keep, rather than the low-score tail kept for AP."""
    kept = detections[detections.scores >= score_thresh]
    return kept[kept.scores.argsort(descending=True)[:max_per_image]]


def _match(detections: Instances, gt: Instances, iou_thresh: float) -> Tensor:
    """Index of each detection's best-overlapping ground-truth box, -1 below ``iou_thresh``."""
    if len(gt) == 0 or len(detections) == 0:
        return torch.full(
            (len(detections),), -1, dtype=torch.int64, device=detections.scores.device
        )
    iou, best = pairwise_iou(detections.pred_boxes, gt.gt_boxes).max(dim=1)
    return torch.where(iou >= iou_thresh, best, torch.full_like(best, -1))


@dataclass
class FiringStats:
    """How much heads fire on pixels of instances they do not belong to.

    ``pair_*`` average over (query, other image) pairs the per-pair fraction of the other
    image's instance pixels with p > 0.5 and their mean p; ``pixel_*`` pool all pixels of all
    pairs (``num_pixels`` counts a pixel once per query). ``grad_share_firing``: of the
    gradient the default inter-scene loss (focal against 0, alpha 0.25, gamma 2) would send
    into the logits of all these pixels, the share that comes from the firing ones; it says
    whether the loss presses where a query fires or on every logit.
    """

    num_pairs: int
    num_pixels: int
    pair_frac_firing: float
    pair_mean_prob: float
    pixel_frac_firing: float
    pixel_mean_prob: float
    grad_share_firing: float


class _FiringTally:
    def __init__(self):
        self.frac, self.prob = [], []
        self.firing = self.prob_sum = self.pixels = 0.0
        self.grad_sum = self.grad_firing = 0.0

    def add(self, logits: Tensor, masks: Tensor) -> None:
        """logits [Q, G, H, W] of Q queries on the G instances' masks, [G, H, W] shared by the
        queries or [Q, G, H, W] per query; a query with no pixel is not a pair."""
        masks = masks.expand_as(logits)
        pixels = masks.sum(dim=(1, 2, 3))
        keep = pixels > 0
        if not keep.any():
            return
        _, grad, probs = focal_and_grad(logits, _DEFAULT_FOCAL_ALPHA, _DEFAULT_FOCAL_GAMMA)
        fires = (probs > 0.5) * masks
        firing = fires.sum(dim=(1, 2, 3))
        prob_sum = (probs * masks).sum(dim=(1, 2, 3))
        self.frac.append(firing[keep] / pixels[keep])
        self.prob.append(prob_sum[keep] / pixels[keep])
        self.firing += firing.sum().item()
        self.prob_sum += prob_sum.sum().item()
        self.pixels += pixels.sum().item()
        self.grad_sum += (grad * masks).sum().item()
        self.grad_firing += (grad * fires).sum().item()

    def stats(self) -> FiringStats:
        frac = torch.cat(self.frac) if self.frac else torch.zeros(0)
        prob = torch.cat(self.prob) if self.prob else torch.zeros(0)
        pixels = self.pixels or float("nan")
        return FiringStats(
            num_pairs=len(frac),
            num_pixels=int(self.pixels),
            pair_frac_firing=frac.mean().item(),
            pair_mean_prob=prob.mean().item(),
            pixel_frac_firing=self.firing / pixels,
            pixel_mean_prob=self.prob_sum / pixels,
            grad_share_firing=self.grad_firing / (self.grad_sum or float("nan")),
        )


def _queries(params: Tensor, locations: Tensor, fpn_levels: Tensor) -> Instances:
    queries = Instances((0, 0))
    queries.mask_head_params = params
    queries.locations = locations
    queries.fpn_levels = fpn_levels
    queries.im_inds = torch.zeros_like(fpn_levels)
    return queries


def _overlaid(gt_masks: Tensor, matched: Tensor, size: Tuple[int, int]) -> Tensor:
    """[Q, H, W] each detection's matched ground-truth mask on a canvas of ``size`` with the
    same top-left origin (zero where the detection has no match or the mask does not reach)."""
    out = gt_masks.new_zeros(len(matched), *size)
    h, w = min(gt_masks.shape[-2], size[0]), min(gt_masks.shape[-1], size[1])
    hit = matched >= 0
    out[hit, :h, :w] = gt_masks[matched[hit], :h, :w]
    return out


def _moved_footprints(own: Tensor, shifts: Tensor, size: Tuple[int, int]) -> Tensor:
    """[Q, G, H, W]: each query's own mask ``own`` [Q, h, w] translated by ``shifts`` [Q, G, 2]
    (x, y in mask pixels, one per instance it is moved onto) on a canvas of ``size``."""
    h, w = own.shape[-2:]
    ys = torch.arange(size[0], device=own.device)[None, None, :, None] - shifts[..., 1, None, None]
    xs = torch.arange(size[1], device=own.device)[None, None, None, :] - shifts[..., 0, None, None]
    inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    q = torch.arange(len(own), device=own.device)[:, None, None, None]
    return own[q, ys.clamp(0, h - 1), xs.clamp(0, w - 1)] * inside


@torch.no_grad()
def false_firing(
    head: DynamicMaskHead,
    feat_stride: int,
    encoded: Sequence[EncodedImage],
    score_thresh: float = 0.3,
    max_per_image: int = 10,
    num_others: int = 29,
    iou_thresh: float = 0.5,
) -> Dict[str, FiringStats]:
    """Inter-scene false firing of the :func:`confident` detections of each image A on the
    ground-truth instance pixels of the ``num_others`` images that follow A (cyclically).

    ``own_position``: the head exactly as it runs on A (absolute location), on F(B).
    ``relative``: the head moved onto each instance of B, so that its relative coordinates are
    those it sees on its own instance: location = centre(B's instance) + location - centre(own),
    where own is A's ground-truth box it matches (IoU >= ``iou_thresh``), else its own box.
    (The inter-scene loss's "instance_centered" mode puts the query at the centre itself.)

    ``own_position`` is also split, for the detections that match a ground-truth instance of A,
    into the pixels of B that lie on that instance when B is laid over A (``on_own_instance``:
    where the mask loss asks the head to fire, the pairs ``EXCLUDE_OWN_FOOTPRINT`` leaves out)
    and the others (``off_own_instance``). ``relative`` is split alike
    (``relative_on_own_instance``, ``relative_off_own_instance``): the pixels of B's instance
    that, moved with it so that its centre is the query's own, land on the query's own
    instance, and those that stick out of it. (Close to what ``EXCLUDE_OWN_FOOTPRINT`` keeps
    under "instance_centered", which centres the look-alike on the query's location instead
    of its instance's centre.)
    """
    names = (
        "own_position",
        "relative",
        "on_own_instance",
        "off_own_instance",
        "relative_on_own_instance",
        "relative_off_own_instance",
    )
    tallies = {name: _FiringTally() for name in names}
    n = len(encoded)
    for a, image_a in enumerate(encoded):
        q = confident(image_a.detections, score_thresh, max_per_image)
        if len(q) == 0:
            continue
        matched = _match(q, image_a.gt, iou_thresh)
        centres = q.pred_boxes.get_centers()
        if (matched >= 0).any():
            gt_centres = image_a.gt.gt_boxes.get_centers()
            centres[matched >= 0] = gt_centres[matched[matched >= 0]]
        offsets = q.locations - centres
        own_masks = _overlaid(image_a.gt.gt_bitmasks, matched, image_a.gt.gt_bitmasks.shape[-2:])
        for j in range(min(num_others, n - 1)):
            image_b = encoded[(a + 1 + j) % n]
            masks = image_b.gt.gt_bitmasks
            num_gt = len(masks)
            if num_gt == 0:
                continue
            own = head(
                image_b.mask_feats,
                feat_stride,
                _queries(q.mask_head_params, q.locations, q.fpn_levels),
            )
            own = own.expand(-1, num_gt, -1, -1)
            tallies["own_position"].add(own, masks)
            # B's instance pixels, for the queries that match an instance of A (the split).
            matched_masks = masks[None] * (matched >= 0)[:, None, None, None]
            footprint = _overlaid(image_a.gt.gt_bitmasks, matched, masks.shape[-2:])
            on = masks[None] * footprint[:, None]
            tallies["on_own_instance"].add(own, on)
            tallies["off_own_instance"].add(own, matched_masks - on)
            centres_b = image_b.gt.gt_boxes.get_centers()
            moved = centres_b[None] + offsets[:, None]  # [Q, G, 2]
            rel = head(
                image_b.mask_feats,
                feat_stride,
                _queries(
                    q.mask_head_params.repeat_interleave(num_gt, dim=0),
                    moved.reshape(-1, 2),
                    q.fpn_levels.repeat_interleave(num_gt),
                ),
            )
            rel = rel.reshape(len(q), num_gt, *rel.shape[-2:])
            tallies["relative"].add(rel, masks)
            shifts = torch.round((centres_b[None] - centres[:, None]) / head.mask_out_stride)
            on = masks[None] * _moved_footprints(own_masks, shifts.long(), masks.shape[-2:])
            tallies["relative_on_own_instance"].add(rel, on)
            tallies["relative_off_own_instance"].add(rel, matched_masks - on)
    return {name: tally.stats() for name, tally in tallies.items()}


@dataclass
class SharpnessStats:
    """Mean mask probability of matched detections inside their ground-truth box, on the
    ground-truth mask and off it (averaged over detections where each is non-empty). The mask
    is also split into its border (cells with an off-mask 8-neighbour) and interior, and the
    off-mask cells next to it (the outer ring) are averaged apart: a loss that softens masks
    at their boundary and one that lowers every logit leave different traces there."""

    num_matched: int
    num_confident: int
    mean_prob_inside: float
    mean_prob_outside: float
    mean_prob_interior: float
    mean_prob_border: float
    mean_prob_ring: float


@torch.no_grad()
def mask_sharpness(
    encoded: Sequence[EncodedImage],
    mask_out_stride: int,
    score_thresh: float = 0.3,
    max_per_image: int = 10,
    iou_thresh: float = 0.5,
) -> SharpnessStats:
    """Inside vs outside probability of the :func:`confident` detections whose box matches a
    ground-truth box (IoU >= ``iou_thresh``), over the stride-``mask_out_stride`` cells whose
    centre lies in that ground-truth box. A sharp mask has inside near 1 and outside near 0."""
    regions: Dict[str, List[float]] = {
        name: [] for name in ("inside", "outside", "interior", "border", "ring")
    }
    num_confident = num_matched = 0
    for image in encoded:
        det = confident(image.detections, score_thresh, max_per_image)
        num_confident += len(det)
        matched = _match(det, image.gt, iou_thresh)
        num_matched += int((matched >= 0).sum())
        h, w = image.gt.gt_bitmasks.shape[-2:]
        device = image.gt.gt_bitmasks.device
        xs = torch.arange(w, device=device) * mask_out_stride + mask_out_stride // 2
        ys = torch.arange(h, device=device) * mask_out_stride + mask_out_stride // 2
        for d in torch.nonzero(matched >= 0).squeeze(1).tolist():
            g = matched[d].item()
            x0, y0, x1, y1 = image.gt.gt_boxes.tensor[g].tolist()
            in_box = ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None]
            on_mask = image.gt.gt_bitmasks[g] > 0
            interior, dilated = _erode_dilate(on_mask)
            probs = det.pred_global_masks[d, 0]
            cells = {
                "inside": in_box & on_mask,
                "outside": in_box & ~on_mask,
                "interior": in_box & interior,
                "border": in_box & on_mask & ~interior,
                "ring": dilated & ~on_mask,
            }
            for name, where in cells.items():
                if where.any():
                    regions[name].append(probs[where].mean().item())
    means = {
        name: float(np.mean(values)) if values else float("nan") for name, values in regions.items()
    }
    return SharpnessStats(
        num_matched=num_matched,
        num_confident=num_confident,
        **{f"mean_prob_{name}": mean for name, mean in means.items()},
    )


def _erode_dilate(mask: Tensor) -> Tuple[Tensor, Tensor]:
    """The mask's cells whose 3x3 neighbourhood lies wholly on it (the image's edge counts as
    on it), and the cells with any mask cell in their 3x3 neighbourhood."""
    m = mask[None, None].float()
    dilated = F.max_pool2d(m, 3, stride=1, padding=1)[0, 0] > 0
    interior = F.max_pool2d(1.0 - m, 3, stride=1, padding=1)[0, 0] == 0
    return interior, dilated


@dataclass
class IdentityStats:
    """How well the mask features F identify instances, from cells sampled on each
    ground-truth instance: the fraction of cells whose most similar other cell (cosine of F)
    belongs to the same instance, among the cells of its own image and among those of every
    measured image, and the mean cosine to cells of the same instance, of other instances of
    the same image and of other images' instances."""

    num_cells: int
    nn_same_instance_in_image: float
    nn_same_instance_overall: float
    cos_same_instance: float
    cos_other_instance_same_image: float
    cos_other_image: float


@torch.no_grad()
def feature_identity(
    encoded: Sequence[EncodedImage],
    feat_stride: int,
    cells_per_instance: int = 16,
    seed: int = 0,
    chunk: int = 1024,
) -> IdentityStats:
    """Up to ``cells_per_instance`` cells of F per ground-truth instance (those whose centre
    pixel the instance's full-resolution mask covers, as training samples them, drawn with a
    fixed ``seed``); only cells whose instance has another sampled cell count in the
    nearest-neighbour fractions, and for the fraction in one image only images with two
    instances or more."""
    generator = torch.Generator().manual_seed(seed)
    feats, instances, images = [], [], []
    instances_in_image = []
    for index, image in enumerate(encoded):
        f = F.normalize(image.mask_feats[0].float(), dim=0)
        h, w = f.shape[-2:]
        num_before = len(instances)
        for mask in cell_masks(image.gt.gt_bitmasks_full, (h, w), feat_stride) > 0:
            where = torch.nonzero(mask.flatten()).squeeze(1).cpu()
            if len(where) == 0:
                continue
            pick = where[torch.randperm(len(where), generator=generator)[:cells_per_instance]]
            feats.append(f.flatten(1)[:, pick.to(f.device)].t())
            instances.append(torch.full((len(pick),), len(instances)))
            images.append(torch.full((len(pick),), index))
        instances_in_image.append(len(instances) - num_before)
    if not feats:
        nan = float("nan")
        return IdentityStats(0, nan, nan, nan, nan, nan)
    x = torch.cat(feats)
    inst = torch.cat(instances).to(x.device)
    img = torch.cat(images).to(x.device)
    has_positive = torch.bincount(inst)[inst] > 1
    crowded = (torch.tensor(instances_in_image, device=x.device) > 1)[img]
    in_image_counted = has_positive & crowded
    sums = {"same": 0.0, "other_inst": 0.0, "other_img": 0.0}
    counts = dict.fromkeys(sums, 0)
    hits_in_image = hits_overall = 0
    for start in range(0, len(x), chunk):
        rows = torch.arange(start, min(start + chunk, len(x)), device=x.device)
        sim = x[rows] @ x.t()
        sim[torch.arange(len(rows), device=x.device), rows] = float("-inf")
        same_inst = inst[rows, None] == inst[None, :]
        same_img = img[rows, None] == img[None, :]
        nn_overall = same_inst.gather(1, sim.argmax(1, keepdim=True))[:, 0]
        hits_overall += int(nn_overall[has_positive[rows]].sum())
        in_image = sim.masked_fill(~same_img, float("-inf"))
        nn_in_image = same_inst.gather(1, in_image.argmax(1, keepdim=True))[:, 0]
        hits_in_image += int(nn_in_image[in_image_counted[rows]].sum())
        finite = torch.isfinite(sim)
        for name, where in (
            ("same", same_inst & finite),
            ("other_inst", same_img & ~same_inst),
            ("other_img", ~same_img),
        ):
            sums[name] += float(sim[where].sum())
            counts[name] += int(where.sum())
    return IdentityStats(
        num_cells=len(x),
        nn_same_instance_in_image=hits_in_image / max(int(in_image_counted.sum()), 1),
        nn_same_instance_overall=hits_overall / max(int(has_positive.sum()), 1),
        cos_same_instance=sums["same"] / max(counts["same"], 1),
        cos_other_instance_same_image=sums["other_inst"] / max(counts["other_inst"], 1),
        cos_other_image=sums["other_img"] / max(counts["other_img"], 1),
    )


def coco_mask_ap(
    model: CondInst, dataset_name: str, encoded: Sequence[EncodedImage]
) -> Dict[str, float]:
    """Mask AP, AP50 and AP75 of all detections (as the model outputs them) on the encoded
    images only, with detectron2's COCO evaluation."""
    evaluator = COCOEvaluator(dataset_name, tasks=("segm",), distributed=False)
    evaluator.reset()
    for image in encoded:
        det = image.detections
        instances = model.postprocess(
            det, det.pred_global_masks, image.padded_size, *image.output_size
        )
        evaluator.process([{"image_id": image.image_id}], [{"instances": instances}])
    segm = evaluator.evaluate(img_ids=[image.image_id for image in encoded])["segm"]
    return {key: segm[key] for key in ("AP", "AP50", "AP75")}
