"""IUQ-CondInst: CondInst trained with Instance-Unique Querying (Wang et al., NeurIPS 2022).

The model is CondInst plus two training-only criteria (as Mask2Former's model holds its
``criterion``), each built from its own config node and testable alone:

* :class:`InterSceneCriterion` (``MODEL.IUQ.INTER``): the queries against instance pixels of
  other images, from this global batch and from a bank shared by all GPUs;
* :class:`EquivarianceCriterion` (``MODEL.IUQ.EQUI``): each image I comes with a view g(I) from
  the dataset mapper; the queries of g(I) must segment it on g(F(I)).

At inference the model is CondInst, with the same weights layout plus the bank's buffers, which
``iuq_d2.strip_checkpoint`` removes.
"""

from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage
from torch import Tensor

from ..condinst import CondInst
from .equivariance import EquivarianceCriterion, view_inputs
from .inter_scene import InterSceneCriterion, image_ids_of

# State dict prefixes of the training-only state (the bank; dropped by strip_checkpoint).
TRAINING_ONLY_PREFIXES = ("inter_scene.", "equivariance.")


@META_ARCH_REGISTRY.register()
class IUQCondInst(CondInst):
    @configurable
    def __init__(
        self,
        *,
        inter_scene: Optional[InterSceneCriterion],
        equivariance: Optional[EquivarianceCriterion],
        gradient_log_period: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.inter_scene = inter_scene
        self.equivariance = equivariance
        self.gradient_log_period = gradient_log_period

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        branch, head = ret["mask_branch"], ret["mask_head"]
        iuq = cfg.MODEL.IUQ
        ret["inter_scene"] = (
            InterSceneCriterion(
                cfg,
                mask_head=head,
                feat_channels=branch.out_channels,
                feat_stride=branch.out_stride,
            )
            if iuq.INTER.ENABLED
            else None
        )
        ret["equivariance"] = (
            EquivarianceCriterion(cfg, feat_stride=branch.out_stride) if iuq.EQUI.ENABLED else None
        )
        ret["gradient_log_period"] = iuq.GRADIENT_LOG_PERIOD
        return ret

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        inputs = batched_inputs
        if self.equivariance is not None:
            inputs = batched_inputs + view_inputs(batched_inputs)
        images = self.preprocess_image(inputs)
        gt_instances = self.prepare_targets(inputs, images)
        outputs = self.forward_train(images, gt_instances)
        losses = outputs.losses
        iteration = get_event_storage().iter
        image_ids = image_ids_of(inputs, self.device)
        if self.equivariance is not None:
            losses.update(
                self.equivariance(outputs, images, gt_instances, batched_inputs, self.mask_loss)
            )
        if self.inter_scene is not None:
            losses.update(
                self.inter_scene(
                    outputs.mask_feats,
                    outputs.queries,
                    gt_instances,
                    image_ids,
                    iteration,
                )
            )
        if self.gradient_log_period > 0 and iteration % self.gradient_log_period == 0:
            log_gradient_balance(losses, outputs.queries.mask_head_params, outputs.mask_feats)
        return losses


# Losses whose gradient balance is logged: the mask loss and what IUQ adds to it.
_BALANCED_LOSSES = (
    "loss_mask",
    "loss_inter",
    "loss_equi_query",
    "loss_equi_feat",
)


def log_gradient_balance(losses: Dict[str, Tensor], queries: Tensor, feats: Tensor) -> None:
    """Log the norm of the gradient each loss sends into the controller's output at the
    sampled positives (``iuq/grad_ctrl/<loss>``) and into the mask features F
    (``iuq/grad_feat/<loss>``): whether IUQ's terms drown the mask loss, or never reach F.
    Gradients of intermediate tensors only: nothing accumulates into the parameters."""
    storage = get_event_storage()
    for name in _BALANCED_LOSSES:
        loss = losses.get(name)
        if loss is None or not loss.requires_grad:
            continue
        grads = torch.autograd.grad(loss, [queries, feats], retain_graph=True, allow_unused=True)
        for kind, grad in zip(("ctrl", "feat"), grads):
            norm = 0.0 if grad is None else grad.float().norm().item()
            storage.put_scalar(f"iuq/grad_{kind}/{name}", norm)
