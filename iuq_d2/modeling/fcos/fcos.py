"""FCOS as a detectron2 proposal generator: dense per-location classification, box regression
and centerness, with CondInst's controller evaluated on the box tower."""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances
from fvcore.nn import sigmoid_focal_loss_jit
from torch import Tensor, nn

from ...layers.losses import ltrb_iou_loss
from ...utils.comm import reduce_mean, to_float_tensor
from .head import FCOSHead
from .targets import assign_targets, centerness_targets, compute_locations


def _flatten(maps: List[Tensor]) -> Tensor:
    """Per-level [N, C, H, W] maps -> [N, L, C], locations ordered level by level, row-major."""
    return torch.cat(
        [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1
    )


def keep_top_scoring(detections: Instances, k: int) -> Instances:
    """The k best-scored detections and every one tied with the k-th, as AdelaiDet keeps them
    after NMS (a cut at the k-th score, not a slice); k <= 0 keeps all."""
    n = len(detections)
    if not 0 < k < n:
        return detections
    kth_best = detections.scores.kthvalue(n - k + 1).values
    return detections[detections.scores >= kth_best]


@PROPOSAL_GENERATOR_REGISTRY.register()
class FCOS(nn.Module):
    """In training, returns the FCOS losses and the positive locations (with the controller's
    output there) that CondInst trains its mask head on; at inference, the detections."""

    @configurable
    def __init__(
        self,
        *,
        fcos_head: FCOSHead,
        in_features: List[str],
        strides: List[int],
        sizes_of_interest: List[float],
        num_classes: int,
        center_sample: bool,
        pos_radius: float,
        focal_alpha: float,
        focal_gamma: float,
        loss_weight_cls: float,
        loc_loss_type: str,
        score_thresh: float,
        thresh_with_ctr: bool,
        pre_nms_topk: int,
        post_nms_topk: int,
        nms_thresh: float,
        pre_nms_rank_with_ctr: bool = True,
        clip_boxes_before_nms: bool = False,
        min_box_size: float = -1.0,
        sqrt_score: bool = True,
        post_nms_keep_ties: bool = True,
    ):
        super().__init__()
        self.fcos_head = fcos_head
        self.in_features = in_features
        self.strides = strides
        self.sizes_of_interest = sizes_of_interest
        self.num_classes = num_classes
        self.center_sample = center_sample
        self.pos_radius = pos_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.loss_weight_cls = loss_weight_cls
        self.loc_loss_type = loc_loss_type
        self.score_thresh = score_thresh
        self.thresh_with_ctr = thresh_with_ctr
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.pre_nms_rank_with_ctr = pre_nms_rank_with_ctr
        self.clip_boxes_before_nms = clip_boxes_before_nms
        self.min_box_size = min_box_size
        self.sqrt_score = sqrt_score
        self.post_nms_keep_ties = post_nms_keep_ties

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        fcos = cfg.MODEL.FCOS
        if len(fcos.FPN_STRIDES) != len(fcos.IN_FEATURES):
            raise ValueError(
                f"MODEL.FCOS.FPN_STRIDES {fcos.FPN_STRIDES} needs one stride per "
                f"MODEL.FCOS.IN_FEATURES {fcos.IN_FEATURES}"
            )
        if len(fcos.SIZES_OF_INTEREST) != len(fcos.IN_FEATURES) - 1:
            raise ValueError(
                f"MODEL.FCOS.SIZES_OF_INTEREST {fcos.SIZES_OF_INTEREST} needs one "
                f"bound fewer than MODEL.FCOS.IN_FEATURES {fcos.IN_FEATURES}"
            )
        for name, stride in zip(fcos.IN_FEATURES, fcos.FPN_STRIDES):
            if name not in input_shape or input_shape[name].stride != stride:
                have = input_shape[name].stride if name in input_shape else "missing"
                raise ValueError(
                    f"MODEL.FCOS.IN_FEATURES: backbone feature {name!r} has stride "
                    f"{have}, MODEL.FCOS.FPN_STRIDES says {stride}"
                )
        if fcos.LOC_LOSS_TYPE not in ("iou", "giou"):
            raise ValueError(
                f"MODEL.FCOS.LOC_LOSS_TYPE must be 'iou' or 'giou', got {fcos.LOC_LOSS_TYPE!r}"
            )
        return {
            "fcos_head": FCOSHead(cfg, input_shape),
            "in_features": fcos.IN_FEATURES,
            "strides": fcos.FPN_STRIDES,
            "sizes_of_interest": fcos.SIZES_OF_INTEREST,
            "num_classes": fcos.NUM_CLASSES,
            "center_sample": fcos.CENTER_SAMPLE,
            "pos_radius": fcos.POS_RADIUS,
            "focal_alpha": fcos.LOSS_ALPHA,
            "focal_gamma": fcos.LOSS_GAMMA,
            "loss_weight_cls": fcos.LOSS_WEIGHT_CLS,
            "loc_loss_type": fcos.LOC_LOSS_TYPE,
            "score_thresh": fcos.INFERENCE_TH_TEST,
            "thresh_with_ctr": fcos.THRESH_WITH_CTR,
            "pre_nms_topk": fcos.PRE_NMS_TOPK_TEST,
            "post_nms_topk": fcos.POST_NMS_TOPK_TEST,
            "nms_thresh": fcos.NMS_TH,
            "pre_nms_rank_with_ctr": fcos.PRE_NMS_RANK_WITH_CTR,
            "clip_boxes_before_nms": fcos.CLIP_BOXES_BEFORE_NMS,
            "min_box_size": fcos.MIN_BOX_SIZE_TEST,
            "sqrt_score": fcos.SQRT_SCORE_TEST,
            "post_nms_keep_ties": fcos.POST_NMS_KEEP_TIES,
        }

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        gt_instances: Optional[List[Instances]] = None,
        top_module: Optional[nn.Module] = None,
    ):
        """Returns ``(positives, losses)`` in training and ``(detections, {})`` at inference.

        ``top_module`` (CondInst's controller) runs on the box tower; its output travels with
        the positives (training) or detections (inference) as ``mask_head_params``.
        """
        feats = [features[f] for f in self.in_features]
        logits, bbox_reg, ctrness, bbox_towers = self.fcos_head(feats)
        top_feats = [top_module(t) for t in bbox_towers] if top_module is not None else None
        locations = [
            compute_locations(f.shape[-2], f.shape[-1], s, f.device)
            for f, s in zip(feats, self.strides)
        ]
        if self.training:
            return self.losses(logits, bbox_reg, ctrness, top_feats, locations, gt_instances)
        return self.predict(logits, bbox_reg, ctrness, top_feats, locations, images.image_sizes), {}

    def losses(self, logits, bbox_reg, ctrness, top_feats, locations, gt_instances):
        num_images = logits[0].shape[0]
        num_locations = sum(len(loc) for loc in locations)
        levels = torch.cat(
            [
                torch.full((len(loc),), i, dtype=torch.long, device=loc.device)
                for i, loc in enumerate(locations)
            ]
        )
        all_locations = torch.cat(locations)
        targets = assign_targets(
            all_locations,
            levels,
            self.strides,
            self.sizes_of_interest,
            gt_instances,
            self.num_classes,
            self.center_sample,
            self.pos_radius,
        )

        logits = _flatten(logits).reshape(-1, self.num_classes)
        bbox_reg = _flatten(bbox_reg).reshape(-1, 4)
        ctrness = _flatten(ctrness).reshape(-1)
        pos = torch.nonzero(targets.labels != self.num_classes).squeeze(1)
        num_pos_avg = torch.clamp(reduce_mean(to_float_tensor(pos.numel(), logits)), min=1.0)

        class_targets = torch.zeros_like(logits)
        class_targets[pos, targets.labels[pos]] = 1.0
        loss_cls = sigmoid_focal_loss_jit(
            logits.float(),
            class_targets.float(),
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            reduction="sum",
        )
        reg_targets = targets.reg_targets[pos]
        ctr_targets = centerness_targets(reg_targets)
        ctr_sum_avg = torch.clamp(reduce_mean(ctr_targets.sum()), min=1e-6)
        loss_loc = (
            ltrb_iou_loss(bbox_reg[pos], reg_targets, self.loc_loss_type) * ctr_targets
        ).sum()
        loss_ctr = F.binary_cross_entropy_with_logits(
            ctrness[pos].float(), ctr_targets, reduction="sum"
        )
        losses = {
            "loss_fcos_cls": loss_cls / num_pos_avg * self.loss_weight_cls,
            "loss_fcos_loc": loss_loc / ctr_sum_avg,
            "loss_fcos_ctr": loss_ctr / num_pos_avg,
        }

        positives = Instances((0, 0))
        positives.locations = all_locations.repeat(num_images, 1)[pos]
        positives.im_inds = pos // num_locations
        positives.fpn_levels = levels.repeat(num_images)[pos]
        positives.gt_inds = targets.gt_inds[pos]
        positives.logits_pred = logits[pos]
        positives.ctrness_pred = ctrness[pos]
        if top_feats is not None:
            positives.mask_head_params = _flatten(top_feats).reshape(
                num_images * num_locations, -1
            )[pos]
        return positives, losses

    def predict(
        self, logits, bbox_reg, ctrness, top_feats, locations, image_sizes: List[Tuple[int, int]]
    ):
        per_level = []
        for level, (lg, reg, ctr, loc) in enumerate(zip(logits, bbox_reg, ctrness, locations)):
            top = top_feats[level] if top_feats is not None else None
            per_level.append(self._predict_level(level, lg, reg, ctr, top, loc, image_sizes))
        results = []
        for image_results in zip(*per_level):
            merged = Instances.cat(list(image_results))
            keep = batched_nms(
                merged.pred_boxes.tensor, merged.scores, merged.pred_classes, self.nms_thresh
            )
            merged = merged[keep]
            if self.post_nms_keep_ties:
                results.append(keep_top_scoring(merged, self.post_nms_topk))
            else:
                # batched_nms returns the kept boxes by decreasing score.
                results.append(merged[: self.post_nms_topk] if self.post_nms_topk > 0 else merged)
        return results

    def _predict_level(self, level, logits, bbox_reg, ctrness, top_feats, locations, image_sizes):
        """One level's candidates per image: those above the score threshold, at most
        PRE_NMS_TOPK_TEST of them, with their boxes in input pixels."""
        num_images, num_classes = logits.shape[:2]
        stride = self.strides[level]
        cls_scores = logits.sigmoid().permute(0, 2, 3, 1).reshape(num_images, -1, num_classes)
        ctr = ctrness.sigmoid().reshape(num_images, -1, 1)
        distances = bbox_reg.permute(0, 2, 3, 1).reshape(num_images, -1, 4) * stride
        scores = cls_scores * ctr
        candidates = (scores if self.thresh_with_ctr else cls_scores) > self.score_thresh
        params = None
        if top_feats is not None:
            params = top_feats.permute(0, 2, 3, 1).reshape(num_images, -1, top_feats.shape[1])

        results = []
        for i in range(num_images):
            cand_scores = scores[i][candidates[i]]
            loc_inds, classes = torch.nonzero(candidates[i], as_tuple=True)
            if cand_scores.numel() > self.pre_nms_topk:
                ranked = cand_scores if self.pre_nms_rank_with_ctr else cls_scores[i][candidates[i]]
                _, top = ranked.topk(self.pre_nms_topk, sorted=False)
                cand_scores, loc_inds, classes = cand_scores[top], loc_inds[top], classes[top]
            xy = locations[loc_inds]
            d = distances[i, loc_inds]
            boxes = torch.stack(
                [xy[:, 0] - d[:, 0], xy[:, 1] - d[:, 1], xy[:, 0] + d[:, 2], xy[:, 1] + d[:, 3]],
                dim=1,
            )
            inst = Instances(image_sizes[i])
            inst.pred_boxes = Boxes(boxes)
            if self.clip_boxes_before_nms:
                inst.pred_boxes.clip(image_sizes[i])
            inst.scores = torch.sqrt(cand_scores) if self.sqrt_score else cand_scores
            inst.pred_classes = classes
            inst.locations = xy
            inst.fpn_levels = torch.full_like(classes, level)
            if params is not None:
                inst.mask_head_params = params[i, loc_inds]
            if self.min_box_size >= 0:
                inst = inst[inst.pred_boxes.nonempty(threshold=self.min_box_size)]
            results.append(inst)
        return results
