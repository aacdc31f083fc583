"""How much mask AP each kind of mask error costs a checkpoint: its detections re-scored with
oracle-corrected masks.

Instance uniqueness can only change what a model predicts on its own test image: a query that
fires on other images costs nothing at evaluation, where every image is segmented alone. What
it can improve directly is a mask that spills onto the *other instances of its own image*. The
oracles below bound that gain, with the model's detections, scores and boxes unchanged, on the
binary masks COCO evaluation scores (at the dataset's image size):

* ``model``: the masks as predicted;
* ``no_neighbours``: each detection's mask cleared on every ground-truth instance other than its
  own: the most any instance-uniqueness term can add to these detections' masks;
* ``no_spill``: cleared everywhere outside its own instance (neighbours and background);
* ``gt_masks``: replaced by its own instance's ground-truth mask: every mask error removed, what
  is left is detection's.

A detection's own instance is the ground-truth mask with the highest IoU with its mask; a
detection that overlaps none is left as predicted under every oracle.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

import torch
import torch.nn.functional as F
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Instances
from torch import Tensor

from .mechanism import EncodedImage

__all__ = [
    "ORACLES",
    "SpillStats",
    "ground_truth_masks",
    "own_instances",
    "oracle_masks",
    "oracle_aps",
]

ORACLES = ("model", "no_neighbours", "no_spill", "gt_masks")


def ground_truth_masks(dataset_dict: dict) -> Tensor:
    """[G, H, W] boolean masks of a dataset dict's non-crowd annotations at the image's own
    size: what COCO evaluation matches detections against."""
    size = (dataset_dict["height"], dataset_dict["width"])
    annotations = [a for a in dataset_dict.get("annotations", []) if not a.get("iscrowd", 0)]
    if not annotations:
        return torch.zeros((0, *size), dtype=torch.bool)
    return annotations_to_instances(annotations, size, mask_format="bitmask").gt_masks.tensor


def own_instances(masks: Tensor, gt_masks: Tensor) -> Tensor:
    """[D] index of each detection's own ground-truth instance, -1 where its mask overlaps
    none. ``masks`` [D, H, W] and ``gt_masks`` [G, H, W], boolean."""
    if len(gt_masks) == 0 or len(masks) == 0:
        return torch.full((len(masks),), -1, dtype=torch.int64, device=masks.device)
    pred = masks.flatten(1).float()
    gt = gt_masks.flatten(1).float()
    inter = pred @ gt.T
    union = pred.sum(1, keepdim=True) + gt.sum(1)[None] - inter
    iou, best = (inter / union.clamp(min=1)).max(dim=1)
    return torch.where(iou > 0, best, torch.full_like(best, -1))


def oracle_masks(masks: Tensor, gt_masks: Tensor, oracle: str) -> Tensor:
    """Boolean ``masks`` [D, H, W] corrected by ``oracle`` (one of :data:`ORACLES`)."""
    if oracle not in ORACLES:
        raise ValueError(f"unknown mask oracle {oracle!r}; expected one of {ORACLES}")
    own = own_instances(masks, gt_masks)
    matched = own >= 0
    if oracle == "model" or not matched.any():
        return masks
    own_gt = gt_masks[own.clamp(min=0)]
    if oracle == "no_neighbours":
        corrected = masks & (own_gt | ~gt_masks.any(dim=0))
    elif oracle == "no_spill":
        corrected = masks & own_gt
    else:
        corrected = own_gt
    return torch.where(matched[:, None, None], corrected, masks)


# Spill on a neighbour farther than this (in pixels, along x or y) from the own instance is
# counted apart: the head firing on the neighbour's body, not a boundary drawn a little off.
FAR_PIXELS = 3


@dataclass
class SpillStats:
    """Where the predicted masks of the detections with an own instance lie, as fractions of
    their pixels: on the own instance, on another instance of the image (and the part of that
    farther than ``FAR_PIXELS`` from the own instance), on background."""

    num_detections: int
    frac_on_own: float
    frac_on_neighbours: float
    frac_on_background: float
    frac_on_neighbours_far: float


class _SpillTally:
    def __init__(self):
        self.counts = torch.zeros(4, dtype=torch.float64)
        self.num = 0

    def add(self, masks: Tensor, gt_masks: Tensor) -> None:
        own = own_instances(masks, gt_masks)
        keep = own >= 0
        if not keep.any():
            return
        masks, own_gt = masks[keep], gt_masks[own[keep]]
        on_any = gt_masks.any(dim=0)
        size = 2 * FAR_PIXELS + 1
        near = F.max_pool2d(own_gt[:, None].float(), size, stride=1, padding=FAR_PIXELS)[:, 0] > 0
        on_neighbours = masks & ~own_gt & on_any
        self.counts += (
            torch.stack(
                [
                    (masks & own_gt).sum(),
                    on_neighbours.sum(),
                    (masks & ~on_any).sum(),
                    (on_neighbours & ~near).sum(),
                ]
            )
            .double()
            .cpu()
        )
        self.num += int(keep.sum())

    def stats(self) -> SpillStats:
        shares = (self.counts / self.counts[:3].sum().clamp(min=1)).tolist()
        return SpillStats(self.num, *shares)


@torch.no_grad()
def oracle_aps(
    model: torch.nn.Module,
    dataset_name: str,
    images: Iterable[Tuple[EncodedImage, Tensor]],
) -> Dict[str, object]:
    """COCO mask AP, AP50 and AP75 of every detection of the encoded images under each oracle,
    and the :class:`SpillStats` of the predicted masks. ``images`` yields each encoded image
    with the boolean [G, H, W] masks of its non-crowd annotations at its ``output_size``; it is
    consumed once, so a generator keeps one image in memory at a time."""
    evaluators = {
        o: COCOEvaluator(dataset_name, tasks=("segm",), distributed=False) for o in ORACLES
    }
    for evaluator in evaluators.values():
        evaluator.reset()
    spill = _SpillTally()
    image_ids = []
    for image, gt in images:
        det = image.detections
        predicted = model.postprocess(
            det, det.pred_global_masks, image.padded_size, *image.output_size
        )
        gt = gt.to(predicted.pred_masks.device)
        spill.add(predicted.pred_masks, gt)
        for oracle, evaluator in evaluators.items():
            corrected = Instances(predicted.image_size, **predicted.get_fields())
            corrected.pred_masks = oracle_masks(predicted.pred_masks, gt, oracle)
            evaluator.process([{"image_id": image.image_id}], [{"instances": corrected}])
        image_ids.append(image.image_id)
    aps = {}
    for oracle, evaluator in evaluators.items():
        segm = evaluator.evaluate(img_ids=image_ids)["segm"]
        aps[oracle] = {key: segm[key] for key in ("AP", "AP50", "AP75")}
    return {"ap": aps, "spill": spill.stats(), "num_images": len(image_ids)}
