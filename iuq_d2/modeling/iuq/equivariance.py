"""The transformation-equivariance criterion: the queries of a view g(I) must segment it on
g(F(I)), the warped representation of I, and (optionally) F(g(I)) must equal g(F(I))."""

from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from ...layers.equivariance import feature_equivariance_loss
from ...layers.warp import warp_to_view
from ..condinst.condinst import CondInstTrainOutputs

EQUI_MODES = ("paired", "extra")

# (mask feats, queries, gt instances of the queries' images, valid cells) -> dice loss
MaskLoss = Callable[[Tensor, Instances, List[Instances], Optional[Tensor]], Tensor]


def view_inputs(batched_inputs: List[dict]) -> List[dict]:
    """The views g(I) as inputs of their own, to append after the originals in one batch. A
    view keeps its original's image id: its instances are the same objects."""
    views = []
    for index, x in enumerate(batched_inputs):
        if "view" not in x:
            raise KeyError(
                f"training input {index} (file {x.get('file_name', '?')}) has no "
                "'view': MODEL.IUQ.EQUI.ENABLED needs a dataset mapper that makes "
                "views (INPUT.DATASET_MAPPER_NAME 'iuq')"
            )
        view = x["view"]
        views.append(
            {
                "image": view["image"],
                "instances": view["instances"],
                "image_id": x.get("image_id"),
                "file_name": x.get("file_name"),
            }
        )
    return views


def view_queries(queries: Instances, num_originals: int, gt_instances: List[Instances]):
    """The queries of the views (the images after the first ``num_originals``), indexed into
    the views' images and ground truth alone."""
    views = queries[queries.im_inds >= num_originals]
    views.im_inds = views.im_inds - num_originals
    views.gt_inds = views.gt_inds - sum(len(g) for g in gt_instances[:num_originals])
    return views


class EquivarianceCriterion(nn.Module):
    """Owns the warp g(F(I)) and both equivariance terms, on the cells where g(F(I)) has a
    counterpart in I. Holds no state."""

    @configurable
    def __init__(self, *, feat_stride: int, query_weight: float, feat_weight: float):
        super().__init__()
        self.feat_stride = feat_stride
        self.query_weight = query_weight
        self.feat_weight = feat_weight

    @classmethod
    def from_config(cls, cfg, feat_stride: int):
        equi = cfg.MODEL.IUQ.EQUI
        if equi.MODE not in EQUI_MODES:
            raise ValueError(f"MODEL.IUQ.EQUI.MODE must be one of {EQUI_MODES}, got {equi.MODE!r}")
        return {
            "feat_stride": feat_stride,
            "query_weight": equi.QUERY_LOSS_WEIGHT,
            "feat_weight": equi.FEAT_LOSS_WEIGHT,
        }

    def warp(
        self, outputs: CondInstTrainOutputs, images: ImageList, batched_inputs: List[dict]
    ) -> Tuple[Tensor, Tensor]:
        """g(F(I)) on the views' grid and its valid cells (``warp_to_view``)."""
        n = len(batched_inputs)
        feats = outputs.mask_feats
        affines = torch.stack([x["view"]["affine"] for x in batched_inputs]).to(feats.device)
        return warp_to_view(
            feats[:n],
            affines,
            images.image_sizes[:n],
            feats.shape[-2:],
            images.image_sizes[n:],
            self.feat_stride,
        )

    def forward(
        self,
        outputs: CondInstTrainOutputs,
        images: ImageList,
        gt_instances: List[Instances],
        batched_inputs: List[dict],
        mask_loss: MaskLoss,
    ) -> Dict[str, Tensor]:
        """Losses of a batch whose first ``len(batched_inputs)`` images are the originals and
        the rest their views, in the same order; ``mask_loss`` is the model's dice loss."""
        n = len(batched_inputs)
        feats = outputs.mask_feats
        warped, valid = self.warp(outputs, images, batched_inputs)
        losses = {}
        if self.query_weight > 0:
            queries = view_queries(outputs.queries, n, gt_instances)
            loss = mask_loss(warped, queries, gt_instances[n:], valid)
            losses["loss_equi_query"] = loss * self.query_weight
        if self.feat_weight > 0:
            loss = feature_equivariance_loss(feats[n:], warped, valid)
            losses["loss_equi_feat"] = loss * self.feat_weight
        return losses
