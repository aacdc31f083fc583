"""CondInst inference as one traceable function of one image, for ONNX and TorchScript.

``CondInst.inference`` cannot be traced as it is: it takes detectron2's dicts and returns
``Instances``, and its FCOS decoding and dynamic mask head take Python decisions on the number of
candidates (``if numel() > pre_nms_topk``, ``len(queries)``) that a trace would freeze to the
example's counts. :class:`TraceableCondInst` runs the same modules and the same math on tensors,
with every data-dependent size left to the graph (TopK, NonZero, NonMaxSuppression), so that one
export serves any image size and any number of detections.
"""

from typing import List, Tuple

import torch
from detectron2.layers import batched_nms, shapes_to_tensor
from detectron2.structures import ImageList
from torch import Tensor, nn

from ..layers.dynamic_mlp import dynamic_mlp, parse_dynamic_params
from ..layers.upsample import aligned_bilinear
from ..modeling.condinst import CondInst
from ..modeling.fcos.targets import compute_locations

# Names of the exported graph's input and outputs, in order.
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "classes", "masks"]
# FCOS post-processing keys whose only traced value is AdelaiDet's: (attribute, key, value).
# mmdetection's converted CondInst (configs/CondInst/mmdet_R_50_ms_poly_90k.yaml) sets others.
_TRACED_POSTPROCESSING = [
    ("pre_nms_rank_with_ctr", "PRE_NMS_RANK_WITH_CTR", True),
    ("clip_boxes_before_nms", "CLIP_BOXES_BEFORE_NMS", False),
    ("min_box_size", "MIN_BOX_SIZE_TEST", -1.0),
    ("sqrt_score", "SQRT_SCORE_TEST", True),
    ("post_nms_keep_ties", "POST_NMS_KEEP_TIES", True),
]


class TraceableCondInst(nn.Module):
    """``image [3, H, W]`` (float, the model's INPUT.FORMAT, 0-255) -> ``boxes [K, 4]`` (x0, y0,
    x1, y1 input pixels), ``scores [K]``, ``classes [K]`` (int64), ``masks [K, H, W]`` (bool),
    detections sorted by decreasing score: what ``CondInst.inference`` returns for the image
    when no output size is asked for.

    Holds the model's modules, not the model, so that an IUQ-CondInst's training-only buffers
    (its query bank) stay out of the exported file.
    """

    def __init__(self, model: CondInst):
        super().__init__()
        fcos = model.proposal_generator
        untraced = [
            f"MODEL.FCOS.{key}"
            for attr, key, v in _TRACED_POSTPROCESSING
            if getattr(fcos, attr) != v
        ]
        if untraced:
            raise ValueError(
                f"export traces AdelaiDet's FCOS post-processing only; {untraced} differ"
            )
        self.backbone = model.backbone
        self.fcos_head = fcos.fcos_head
        self.controller = model.controller
        self.mask_branch = model.mask_branch
        self.mask_head = model.mask_head
        self.register_buffer("pixel_mean", model._pixel_mean.clone(), persistent=False)
        self.register_buffer("pixel_std", model._pixel_std.clone(), persistent=False)
        self.in_features: List[str] = list(fcos.in_features)
        self.strides: List[int] = list(fcos.strides)
        self.score_thresh = fcos.score_thresh
        self.thresh_with_ctr = fcos.thresh_with_ctr
        self.pre_nms_topk = fcos.pre_nms_topk
        self.post_nms_topk = fcos.post_nms_topk
        self.nms_thresh = fcos.nms_thresh
        self.mask_threshold = model.mask_threshold

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        height, width = image.shape[-2:]
        normalized = (image - self.pixel_mean) / self.pixel_std
        # Pads to the backbone's size divisibility inside the graph, as preprocess_image does.
        padded = ImageList.from_tensors([normalized], self.backbone.size_divisibility).tensor
        features = self.backbone(padded)
        mask_feats, _ = self.mask_branch(features)
        feats = [features[f] for f in self.in_features]
        logits, bbox_reg, ctrness, bbox_towers = self.fcos_head(feats)
        per_level = [
            self._level_candidates(
                level,
                lg[0],
                reg[0],
                ctr[0],
                self.controller(tower)[0],
            )
            for level, (lg, reg, ctr, tower) in enumerate(
                zip(logits, bbox_reg, ctrness, bbox_towers)
            )
        ]
        boxes, scores, classes, locations, levels, params = [torch.cat(x) for x in zip(*per_level)]

        keep = batched_nms(boxes, scores, classes, self.nms_thresh)
        keep = keep[self._top_scoring(scores[keep])]
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        locations, levels, params = locations[keep], levels[keep], params[keep]

        # detector_postprocess at scale 1: clip to the image, drop the boxes left empty.
        bounds = shapes_to_tensor([width, height, width, height], boxes.device)
        boxes = torch.min(boxes.clamp(min=0), bounds.to(boxes.dtype))
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[nonempty], scores[nonempty], classes[nonempty]
        probs = self._mask_probs(
            mask_feats, locations[nonempty], levels[nonempty], params[nonempty]
        )
        masks = aligned_bilinear(probs, self.mask_head.mask_out_stride)[:, 0, :height, :width]
        return boxes, scores, classes, masks > self.mask_threshold

    def _level_candidates(
        self, level: int, logits: Tensor, bbox_reg: Tensor, ctrness: Tensor, params: Tensor
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """FCOS._predict_level for one image: the candidates above the score threshold, at most
        ``pre_nms_topk`` of them, taken as the top-k of all scores with the others ranked below
        every candidate (-1), then the non-candidates dropped."""
        num_classes = logits.shape[0]
        stride = self.strides[level]
        scores = logits.sigmoid().permute(1, 2, 0).reshape(-1, num_classes)
        ctr = ctrness.sigmoid().reshape(-1, 1)
        if self.thresh_with_ctr:
            scores = scores * ctr
        candidates = scores > self.score_thresh
        if not self.thresh_with_ctr:
            scores = scores * ctr
        scores, candidates = scores.reshape(-1), candidates.reshape(-1)
        ranked = torch.where(candidates, scores, torch.full_like(scores, -1.0))
        # The count is a graph value (not a constant) when traced: TopK's k is decided at run time.
        num = torch.clamp(shapes_to_tensor([ranked.shape[0]])[0], max=self.pre_nms_topk)
        top = ranked.topk(num).indices
        top = top[candidates[top]]
        loc_inds = torch.div(top, num_classes, rounding_mode="floor")
        classes = top % num_classes

        h, w = logits.shape[-2:]
        xy = compute_locations(h, w, stride, logits.device)[loc_inds]
        d = (bbox_reg.permute(1, 2, 0).reshape(-1, 4) * stride)[loc_inds]
        boxes = torch.stack(
            [xy[:, 0] - d[:, 0], xy[:, 1] - d[:, 1], xy[:, 0] + d[:, 2], xy[:, 1] + d[:, 3]], 1
        )
        params = params.permute(1, 2, 0).reshape(h * w, -1)[loc_inds]
        levels = torch.full_like(classes, level)
        return boxes, torch.sqrt(scores[top]), classes, xy, levels, params

    def _top_scoring(self, sorted_scores: Tensor) -> Tensor:
        """keep_top_scoring's cut (the k best and all tied with the k-th) on scores sorted in
        decreasing order, as a mask. Padding with -inf makes the k-th value exist, and keep all,
        when there are fewer than k, without a branch on the count."""
        if self.post_nms_topk <= 0:
            return torch.ones_like(sorted_scores, dtype=torch.bool)
        padding = sorted_scores.new_full((self.post_nms_topk,), float("-inf"))
        kth_best = torch.cat([sorted_scores, padding])[self.post_nms_topk - 1]
        return sorted_scores >= kth_best

    def _mask_probs(
        self, mask_feats: Tensor, locations: Tensor, levels: Tensor, params: Tensor
    ) -> Tensor:
        """DynamicMaskHead.forward on the detections of the one image, sized by the graph
        (``-1`` and indexing) where the head reshapes by ``len(queries)``: mask probabilities
        [K, 1, H/s, W/s] at ``mask_out_stride`` s."""
        head = self.mask_head
        stride = self.mask_branch.out_stride
        h, w = mask_feats.shape[-2:]
        # -1 on the detections axis: with none, onnxruntime cannot infer any other axis.
        inputs = mask_feats[torch.zeros_like(levels)].reshape(-1, head.in_channels, h * w)
        if not head.disable_rel_coords:
            pixels = compute_locations(h, w, stride, mask_feats.device)
            soi = head.sizes_of_interest.float()[levels]
            rel = (locations[:, :, None] - pixels.t()[None]) / soi[:, None, None]
            inputs = torch.cat([rel.to(inputs.dtype), inputs], dim=1)
        weights, biases = parse_dynamic_params(params, head.layer_shapes)
        logits = dynamic_mlp(inputs, weights, biases).reshape(-1, 1, h, w)
        return aligned_bilinear(logits, stride // head.mask_out_stride).sigmoid()
