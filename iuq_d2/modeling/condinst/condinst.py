"""CondInst (Tian et al., ECCV 2020) as a detectron2 meta-architecture."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_proposal_generator
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from torch import Tensor, nn

from ...layers.losses import dice_from_terms
from ...layers.mask_dice import chunked_upsampled_dice_terms, upsampled_dice_terms
from ...layers.upsample import aligned_bilinear
from .boxinst import BoxInstCriterion
from .dynamic_mask_head import DynamicMaskHead
from .mask_branch import MaskBranch


@dataclass
class CondInstTrainOutputs:
    """What one training forward computed, for meta-architectures that add losses on top."""

    losses: Dict[str, Tensor]
    mask_feats: Tensor  # [N, C, H/8, W/8], the representation F
    queries: Instances  # the positives that trained the mask head (see CondInst.sample_queries)


def topk_per_instance(positives: Instances, num_images: int, k: int) -> Instances:
    """Per image, its k best positives (classification times centerness) shared evenly among
    the instances that have a positive, at least one each, as AdelaiDet's
    TOPK_PROPOSALS_PER_IM: an instance too small to get a positive takes no share."""
    scores = positives.logits_pred.sigmoid().max(dim=1).values * positives.ctrness_pred.sigmoid()
    keep = []
    for image in range(num_images):
        in_image = torch.nonzero(positives.im_inds == image).squeeze(1)
        if len(in_image) == 0:
            continue
        with_positives = positives.gt_inds[in_image].unique()
        per_gt = max(k // len(with_positives), 1)
        for gt in with_positives:
            of_gt = in_image[positives.gt_inds[in_image] == gt]
            keep.append(of_gt[scores[of_gt].topk(min(per_gt, len(of_gt))).indices])
    if not keep:
        return positives[positives.im_inds < 0]
    return positives[torch.cat(keep)]


@META_ARCH_REGISTRY.register()
class CondInst(nn.Module):
    """Backbone + FCOS + controller + mask branch + dynamic mask head.

    Attribute names follow AdelaiDet (``proposal_generator``, ``controller``, ``mask_branch``,
    ``mask_head``) so that its checkpoints load unchanged.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        proposal_generator: nn.Module,
        mask_branch: MaskBranch,
        mask_head: DynamicMaskHead,
        pixel_mean: List[float],
        pixel_std: List[float],
        max_proposals: int,
        topk_proposals_per_im: int,
        boxinst: Optional[BoxInstCriterion] = None,
        mask_threshold: float = 0.5,
        channels_last: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.mask_branch = mask_branch
        self.mask_head = mask_head
        tower_channels = proposal_generator.fcos_head.cls_logits.in_channels
        self.controller = nn.Conv2d(tower_channels, mask_head.num_params, 3, padding=1)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.constant_(self.controller.bias, 0.0)
        self.max_proposals = max_proposals
        self.topk_proposals_per_im = topk_proposals_per_im
        self.mask_threshold = mask_threshold
        # BoxInst's losses in place of the mask loss (MODEL.BOXINST.ENABLED); None: CondInst.
        self.boxinst = boxinst
        # Not buffers: AdelaiDet's checkpoints hold no pixel_mean/pixel_std.
        self._pixel_mean = torch.tensor(pixel_mean).view(-1, 1, 1)
        self._pixel_std = torch.tensor(pixel_std).view(-1, 1, 1)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, cfg):
        condinst = cfg.MODEL.CONDINST
        if condinst.MAX_PROPOSALS != -1 and condinst.TOPK_PROPOSALS_PER_IM != -1:
            raise ValueError(
                "Set at most one of MODEL.CONDINST.MAX_PROPOSALS "
                f"({condinst.MAX_PROPOSALS}) and MODEL.CONDINST.TOPK_PROPOSALS_PER_IM "
                f"({condinst.TOPK_PROPOSALS_PER_IM}); use -1 to disable one"
            )
        if len(cfg.MODEL.PIXEL_MEAN) != len(cfg.MODEL.PIXEL_STD):
            raise ValueError(
                f"MODEL.PIXEL_MEAN {cfg.MODEL.PIXEL_MEAN} and MODEL.PIXEL_STD "
                f"{cfg.MODEL.PIXEL_STD} differ in length"
            )
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        mask_branch = MaskBranch(cfg, shapes)
        if mask_branch.out_stride % condinst.MASK_OUT_STRIDE != 0:
            raise ValueError(
                f"MODEL.CONDINST.MASK_OUT_STRIDE ({condinst.MASK_OUT_STRIDE}) must "
                f"divide the mask branch stride ({mask_branch.out_stride})"
            )
        boxinst = None
        if cfg.MODEL.BOXINST.ENABLED:
            if cls is not CondInst:
                raise ValueError(
                    "MODEL.BOXINST.ENABLED trains plain CondInst (MODEL.META_ARCHITECTURE "
                    f"'CondInst'), not {cls.__name__}: IUQ's terms are defined for mask "
                    "supervision (docs/method.md)"
                )
            boxinst = BoxInstCriterion.from_config(cfg)
        return {
            "boxinst": boxinst,
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, shapes),
            "mask_branch": mask_branch,
            "mask_head": DynamicMaskHead(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "max_proposals": condinst.MAX_PROPOSALS,
            "topk_proposals_per_im": condinst.TOPK_PROPOSALS_PER_IM,
            "channels_last": condinst.CHANNELS_LAST,
        }

    @property
    def device(self) -> torch.device:
        return self.controller.weight.device

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        gt_instances = self.prepare_targets(batched_inputs, images)
        return self.forward_train(images, gt_instances).losses

    def preprocess_image(self, batched_inputs: List[dict]) -> ImageList:
        mean = self._pixel_mean.to(self.device)
        std = self._pixel_std.to(self.device)
        images = [(x["image"].to(self.device) - mean) / std for x in batched_inputs]
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        if self.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def prepare_targets(self, batched_inputs: List[dict], images: ImageList) -> List[Instances]:
        """Move the ground truth to the device and rasterise its masks on the padded canvas:
        ``gt_bitmasks_full`` [G, H, W] (uint8) and ``gt_bitmasks`` [G, H/s, W/s] (float) sampled
        at the centres of the ``MASK_OUT_STRIDE`` cells. BoxInst rasterises the boxes
        instead (:meth:`prepare_box_targets`)."""
        if self.boxinst is not None:
            return self.prepare_box_targets(batched_inputs, images)
        stride = self.mask_head.mask_out_stride
        padded_h, padded_w = images.tensor.shape[-2:]
        targets = []
        for index, x in enumerate(batched_inputs):
            if "instances" not in x:
                raise KeyError(
                    f"training input {index} (file {x.get('file_name', '?')}) has no "
                    "'instances'; the dataset mapper must be built with is_train=True"
                )
            inst = x["instances"]
            h, w = images.image_sizes[index]
            if not inst.has("gt_masks"):
                raise KeyError(
                    f"training input {index} (file {x.get('file_name', '?')}) has no "
                    "gt_masks; CondInst needs instance masks (MODEL.MASK_ON), BoxInst "
                    "(MODEL.BOXINST.ENABLED) only boxes"
                )
            masks = inst.gt_masks
            if isinstance(masks, PolygonMasks):
                bitmasks = BitMasks.from_polygon_masks(masks, h, w).tensor
            elif isinstance(masks, BitMasks):
                bitmasks = masks.tensor
            else:
                raise TypeError(f"unsupported gt_masks type {type(masks).__name__}")
            full = torch.zeros(
                (len(inst), padded_h, padded_w), dtype=torch.uint8, device=self.device
            )
            full[:, : bitmasks.shape[1], : bitmasks.shape[2]] = bitmasks.to(
                self.device, torch.uint8
            )
            inst = inst.to(self.device)
            inst.gt_bitmasks_full = full
            inst.gt_bitmasks = full[:, stride // 2 :: stride, stride // 2 :: stride].float()
            targets.append(inst)
        return targets

    def prepare_box_targets(self, batched_inputs: List[dict], images: ImageList) -> List[Instances]:
        """BoxInst's ground truth: the instances on the device with their boxes' masks as
        ``gt_bitmasks_full`` and ``gt_bitmasks`` and their image's colour similarity
        (:meth:`BoxInstCriterion.add_targets`), from the unnormalised images padded with
        zeros to the size of ``images``."""
        raw = torch.zeros(images.tensor.shape, dtype=torch.uint8, device=self.device)
        targets = []
        for index, (x, (h, w)) in enumerate(zip(batched_inputs, images.image_sizes)):
            if "instances" not in x:
                raise KeyError(
                    f"training input {index} (file {x.get('file_name', '?')}) has no "
                    "'instances'; the dataset mapper must be built with is_train=True"
                )
            raw[index, :, :h, :w] = x["image"].to(self.device, torch.uint8)
            targets.append(x["instances"].to(self.device))
        heights = [x.get("height", h) for x, (h, _) in zip(batched_inputs, images.image_sizes)]
        self.boxinst.add_targets(
            targets, raw, images.image_sizes, heights, self.mask_head.mask_out_stride
        )
        return targets

    def forward_train(
        self, images: ImageList, gt_instances: List[Instances]
    ) -> CondInstTrainOutputs:
        features = self.backbone(images.tensor)
        mask_feats, losses = self.mask_branch(features, gt_instances)
        positives, fcos_losses = self.proposal_generator(
            images, features, gt_instances, self.controller
        )
        losses.update(fcos_losses)
        queries = self.sample_queries(positives, gt_instances)
        if self.boxinst is None:
            losses["loss_mask"] = self.mask_loss(mask_feats, queries, gt_instances)
        else:
            losses.update(self.box_losses(mask_feats, queries, gt_instances))
        self.mask_head._iter += 1
        return CondInstTrainOutputs(losses, mask_feats, queries)

    def box_losses(
        self, mask_feats: Tensor, queries: Instances, gt_instances: List[Instances]
    ) -> Dict[str, Tensor]:
        """BoxInst's ``loss_prj`` and ``loss_pairwise`` of the queries' masks at the mask
        output stride (:meth:`BoxInstCriterion.losses`)."""
        if len(queries) == 0:
            # Keep every parameter in the graph so DDP's gradient reduction stays in step.
            zero = mask_feats.sum() * 0.0 + queries.mask_head_params.sum() * 0.0
            return {"loss_prj": zero, "loss_pairwise": zero}
        logits = self.mask_head(mask_feats, self.mask_branch.out_stride, queries)
        return self.boxinst.losses(logits, queries.gt_inds, gt_instances, self.mask_head._iter)

    def sample_queries(self, positives: Instances, gt_instances: List[Instances]) -> Instances:
        """The positives whose dynamic heads the mask loss trains: all of them, a random subset
        of MAX_PROPOSALS, or per image the TOPK_PROPOSALS_PER_IM best-scored spread evenly over
        its instances."""
        if self.max_proposals != -1:
            if len(positives) > self.max_proposals:
                keep = torch.randperm(len(positives), device=positives.im_inds.device)[
                    : self.max_proposals
                ]
                positives = positives[keep]
            return positives
        if self.topk_proposals_per_im == -1:
            return positives
        return topk_per_instance(positives, len(gt_instances), self.topk_proposals_per_im)

    def mask_loss(
        self,
        mask_feats: Tensor,
        queries: Instances,
        gt_instances: List[Instances],
        valid: Optional[Tensor] = None,
    ) -> Tensor:
        """Mean dice loss of the queries' masks against their ground-truth instances.

        ``valid`` ([N, H, W] bool at the stride of ``mask_feats``), when given, restricts the
        loss to those cells of each query's image.
        """
        if len(queries) == 0:
            # Keep every parameter in the graph so DDP's gradient reduction stays in step.
            return mask_feats.sum() * 0.0 + queries.mask_head_params.sum() * 0.0
        terms = self.mask_dice_terms(mask_feats, queries, gt_instances, valid)
        return dice_from_terms(*terms).mean()

    def mask_dice_terms(
        self,
        mask_feats: Tensor,
        queries: Instances,
        gt_instances: List[Instances],
        valid: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """Per query, the numerator and denominator of its dice loss (``dice_terms``).

        Only the "reference" head keeps every query's stride-4 maps for the backward; the
        others score the queries in chunks (``chunked_upsampled_dice_terms``): the same
        numbers, a fraction of the memory."""
        stride = self.mask_branch.out_stride
        logits = self.mask_head.feature_stride_logits(mask_feats, stride, queries)
        terms = (
            upsampled_dice_terms
            if self.mask_head.impl == "reference"
            else chunked_upsampled_dice_terms
        )
        return terms(
            logits,
            stride // self.mask_head.mask_out_stride,
            torch.cat([x.gt_bitmasks for x in gt_instances]),
            queries.gt_inds,
            valid,
            queries.im_inds,
        )

    def detect(self, images: ImageList) -> Tuple[List[Instances], Tensor]:
        """The FCOS detections of each image and the mask logits [D, 1, H', W'] of all of
        them, in that order (before the sigmoid and any resizing)."""
        features = self.backbone(images.tensor)
        mask_feats, _ = self.mask_branch(features)
        detections, _ = self.proposal_generator(images, features, None, self.controller)
        queries = Instances((0, 0))
        for name in ("mask_head_params", "locations", "fpn_levels"):
            queries.set(name, torch.cat([d.get(name) for d in detections]))
        queries.im_inds = torch.cat(
            [torch.full_like(d.pred_classes, i) for i, d in enumerate(detections)]
        )
        return detections, self.mask_head(mask_feats, self.mask_branch.out_stride, queries)

    def inference(self, batched_inputs: List[dict], do_postprocess: bool = True):
        images = self.preprocess_image(batched_inputs)
        detections, logits = self.detect(images)
        probs = logits.sigmoid()
        per_image = probs.split([len(d) for d in detections])
        if not do_postprocess:
            for det, p in zip(detections, per_image):
                det.pred_global_masks = p
            return detections
        padded_size = images.tensor.shape[-2:]
        return [
            {
                "instances": self.postprocess(
                    det, p, padded_size, x.get("height", h), x.get("width", w)
                )
            }
            for det, p, x, (h, w) in zip(detections, per_image, batched_inputs, images.image_sizes)
        ]

    def postprocess(
        self,
        det: Instances,
        mask_probs: Tensor,
        padded_size: Tuple[int, int],
        out_h: int,
        out_w: int,
    ) -> Instances:
        """Scale boxes to the requested output size and turn the stride-``MASK_OUT_STRIDE``
        mask probabilities into binary masks of that size."""
        h, w = det.image_size
        factor = padded_size[0] // mask_probs.shape[-2]
        masks = aligned_bilinear(mask_probs, factor)[:, :, :h, :w]
        masks = F.interpolate(masks, size=(out_h, out_w), mode="bilinear", align_corners=False)
        # detector_postprocess scales and clips the boxes and drops empty ones; the masks ride
        # along under a name it does not treat as ROI masks, so they are dropped in step.
        result = detector_postprocess(
            Instances(
                det.image_size,
                pred_boxes=det.pred_boxes,
                scores=det.scores,
                pred_classes=det.pred_classes,
                global_masks=masks[:, 0] > self.mask_threshold,
            ),
            out_h,
            out_w,
        )
        result.pred_masks = result.global_masks
        result.remove("global_masks")
        return result
