"""IUQ-CondInst: CondInst trained with Instance-Unique Querying (Wang et al., NeurIPS 2022).

Two groups of training losses are added to CondInst's:

* inter-scene uniqueness: the queries against instance pixels of other images, taken from a
  bank shared by all GPUs (``MODEL.IUQ.INTER``);
* transformation equivariance: each image I comes with a view g(I) from the dataset mapper;
  the queries of g(I) must segment it on g(F(I)), the warped representation of I, and F(g(I))
  must equal g(F(I)) (``MODEL.IUQ.EQUI``).

At inference the model is CondInst, with the same weights layout (plus the query bank's
buffers, which ``iuq_d2.strip_checkpoint`` removes).
"""
import zlib
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor

from ...layers.equivariance import feature_equivariance_loss
from ...layers.inter_scene import inter_scene_focal_loss
from ...layers.warp import warp_to_view
from ..condinst import CondInst, CondInstTrainOutputs
from .query_bank import BankEntries, QueryBank

COORD_MODES = ("instance_centered", "overlay")
EQUI_MODES = ("paired", "extra")
FEAT_DISTANCES = ("l2", "cosine")


def image_ids_of(batched_inputs: List[dict], device: torch.device) -> Tensor:
    """The dataset's ``image_id`` of each input (a hash of its file name when absent): the
    identity that keeps a query from being penalised on its own image's pixels, including
    pixels that an earlier epoch put in the bank."""
    ids = []
    for x in batched_inputs:
        image_id = x.get("image_id")
        if not isinstance(image_id, int):
            image_id = zlib.crc32(str(image_id if image_id is not None else x["file_name"]).encode())
        ids.append(image_id)
    return torch.tensor(ids, dtype=torch.int64, device=device)


@META_ARCH_REGISTRY.register()
class IUQCondInst(CondInst):
    @configurable
    def __init__(
        self,
        *,
        inter_enabled: bool,
        inter_weight: float,
        inter_warmup_iters: int,
        inter_alpha: float,
        inter_gamma: float,
        inter_coords: str,
        bank_size: int,
        pixels_per_instance: int,
        num_negatives: int,
        equi_enabled: bool,
        equi_query_weight: float,
        equi_feat_weight: float,
        equi_feat_distance: str,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.inter_weight = inter_weight
        self.inter_warmup_iters = inter_warmup_iters
        self.inter_alpha = inter_alpha
        self.inter_gamma = inter_gamma
        self.inter_coords = inter_coords
        self.pixels_per_instance = pixels_per_instance
        self.num_negatives = num_negatives
        self.query_bank = QueryBank(bank_size, self.mask_branch.out_channels) if inter_enabled else None
        self.equi_enabled = equi_enabled
        self.equi_query_weight = equi_query_weight
        self.equi_feat_weight = equi_feat_weight
        self.equi_feat_distance = equi_feat_distance

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        inter = cfg.MODEL.IUQ.INTER
        if inter.COORDS not in COORD_MODES:
            raise ValueError(f"MODEL.IUQ.INTER.COORDS must be one of {COORD_MODES}, got {inter.COORDS!r}")
        for key in ("PIXELS_PER_INSTANCE", "NUM_NEGATIVES"):
            if inter[key] < 0:
                raise ValueError(f"MODEL.IUQ.INTER.{key} must be >= 0, got {inter[key]}")
        equi = cfg.MODEL.IUQ.EQUI
        if equi.MODE not in EQUI_MODES:
            raise ValueError(f"MODEL.IUQ.EQUI.MODE must be one of {EQUI_MODES}, got {equi.MODE!r}")
        if equi.FEAT_DISTANCE not in FEAT_DISTANCES:
            raise ValueError(f"MODEL.IUQ.EQUI.FEAT_DISTANCE must be one of {FEAT_DISTANCES}, "
                             f"got {equi.FEAT_DISTANCE!r}")
        ret.update(
            equi_enabled=equi.ENABLED,
            equi_query_weight=equi.QUERY_LOSS_WEIGHT,
            equi_feat_weight=equi.FEAT_LOSS_WEIGHT,
            equi_feat_distance=equi.FEAT_DISTANCE,
            inter_enabled=inter.ENABLED,
            inter_weight=inter.LOSS_WEIGHT,
            inter_warmup_iters=inter.WARMUP_ITERS,
            inter_alpha=inter.FOCAL_ALPHA,
            inter_gamma=inter.FOCAL_GAMMA,
            inter_coords=inter.COORDS,
            bank_size=inter.BANK_SIZE,
            pixels_per_instance=inter.PIXELS_PER_INSTANCE,
            num_negatives=inter.NUM_NEGATIVES,
        )
        return ret

    def forward(self, batched_inputs: List[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        inputs = batched_inputs + self.view_inputs(batched_inputs) if self.equi_enabled else batched_inputs
        images = self.preprocess_image(inputs)
        gt_instances = self.prepare_targets(inputs, images)
        outputs = self.forward_train(images, gt_instances)
        losses = outputs.losses
        if self.equi_enabled:
            losses.update(self.equivariance_losses(outputs, images, gt_instances, batched_inputs))
        if self.query_bank is not None:
            image_ids = image_ids_of(inputs, self.device)
            losses["loss_inter"] = self.inter_scene_loss(outputs, gt_instances, image_ids)
        return losses

    @staticmethod
    def view_inputs(batched_inputs: List[dict]) -> List[dict]:
        """The views g(I) as inputs of their own, appended after the originals in one batch.
        A view keeps its original's image id: its instances are the same objects."""
        views = []
        for index, x in enumerate(batched_inputs):
            if "view" not in x:
                raise KeyError(f"training input {index} (file {x.get('file_name', '?')}) has no "
                               "'view': MODEL.IUQ.EQUI.ENABLED needs the IUQDatasetMapper, which "
                               "iuq_d2's Trainer builds for IUQCondInst")
            view = x["view"]
            views.append({"image": view["image"], "instances": view["instances"],
                          "image_id": x.get("image_id"), "file_name": x.get("file_name")})
        return views

    def equivariance_losses(self, outputs: CondInstTrainOutputs, images, gt_instances: List[Instances],
                            batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """Query equivariance (the dice loss of the views' queries applied to g(F(I))) and
        representation equivariance (F(g(I)) against g(F(I))), on the cells where g(F(I)) has a
        counterpart in I."""
        n = len(batched_inputs)
        feats = outputs.mask_feats
        affines = torch.stack([x["view"]["affine"] for x in batched_inputs]).to(self.device)
        warped, valid = warp_to_view(feats[:n], affines, images.image_sizes[:n], feats.shape[-2:],
                                     images.image_sizes[n:], self.mask_branch.out_stride)
        losses = {}
        if self.equi_query_weight > 0:
            queries = outputs.queries[outputs.queries.im_inds >= n]
            queries.im_inds = queries.im_inds - n
            queries.gt_inds = queries.gt_inds - sum(len(g) for g in gt_instances[:n])
            loss = self.mask_loss(warped, queries, gt_instances[n:], valid)
            losses["loss_equi_query"] = loss * self.equi_query_weight
        if self.equi_feat_weight > 0:
            loss = feature_equivariance_loss(feats[n:], warped, valid, self.equi_feat_distance)
            losses["loss_equi_feat"] = loss * self.equi_feat_weight
        return losses

    def inter_scene_loss(self, outputs: CondInstTrainOutputs, gt_instances: List[Instances],
                         image_ids: Tensor) -> Tensor:
        """The queries of this batch against bank samples and this global batch's instance
        pixels; afterwards the batch's pixels join the bank."""
        current = self.collect_entries(outputs.mask_feats, gt_instances, image_ids)
        num_local = len(current)
        current = current.all_gather()
        negatives = BankEntries.cat([self.query_bank.sample(self.num_negatives), current])

        queries = outputs.queries
        if self.inter_coords == "instance_centered":
            # The query sits at the centre of the pixel's instance: rel = offset / soi.
            query_anchors = torch.zeros_like(queries.locations)
            pixel_anchors = -negatives.offsets
        else:
            query_anchors = queries.locations
            pixel_anchors = negatives.positions
        soi = self.mask_head.sizes_of_interest.float()[queries.fpn_levels]
        loss, stats = inter_scene_focal_loss(
            queries.mask_head_params, query_anchors, soi, image_ids[queries.im_inds],
            negatives.feats, pixel_anchors, negatives.image_ids, self.mask_head.layer_shapes,
            use_rel_coords=not self.mask_head.disable_rel_coords,
            alpha=self.inter_alpha, gamma=self.inter_gamma,
        )
        self.query_bank.enqueue(current)

        storage = get_event_storage()
        storage.put_scalar("iuq/bank_fill", self.query_bank.num_filled / self.query_bank.capacity)
        storage.put_scalar("iuq/inter_frac_firing", stats.frac_firing.item())
        storage.put_scalar("iuq/inter_pairs", stats.num_pairs.item())
        storage.put_scalar("iuq/entries_this_rank", num_local)
        storage.put_scalar("iuq/entries_gathered", len(current))
        return loss * self.inter_weight * self.warmup_factor()

    def warmup_factor(self) -> float:
        if self.inter_warmup_iters <= 0:
            return 1.0
        return min(float(self.mask_head._iter.item()) / self.inter_warmup_iters, 1.0)

    @torch.no_grad()
    def collect_entries(self, mask_feats: Tensor, gt_instances: List[Instances], image_ids: Tensor) -> BankEntries:
        """``pixels_per_instance`` pixels of every ground-truth instance, drawn among the
        stride-8 cells whose centre it covers (with replacement when it covers fewer). An
        instance too small to cover any cell centre contributes the cell holding its box
        centre instead, so small objects are represented too."""
        stride = self.mask_branch.out_stride
        start = stride // 2
        h, w = mask_feats.shape[-2:]
        k = self.pixels_per_instance
        parts = []
        for b, inst in enumerate(gt_instances):
            if len(inst) == 0 or k == 0:
                continue
            cells = inst.gt_bitmasks_full[:, start::stride, start::stride][:, :h, :w].flatten(1).float()
            centers = inst.gt_boxes.get_centers()
            tiny = (cells.sum(dim=1) == 0) & (inst.gt_bitmasks_full.flatten(1).amax(dim=1) > 0)
            if tiny.any():
                cx = (centers[tiny, 0] // stride).long().clamp(0, w - 1)
                cy = (centers[tiny, 1] // stride).long().clamp(0, h - 1)
                cells[tiny.nonzero().squeeze(1), cy * w + cx] = 1.0
            keep = torch.nonzero(cells.sum(dim=1) > 0).squeeze(1)
            if len(keep) == 0:
                continue
            cells = cells[keep]
            enough = cells.sum(dim=1) >= k
            picked = torch.empty((len(keep), k), dtype=torch.int64, device=cells.device)
            if enough.any():
                picked[enough] = torch.multinomial(cells[enough], k, replacement=False)
            if (~enough).any():
                picked[~enough] = torch.multinomial(cells[~enough], k, replacement=True)
            picked = picked.flatten()
            ys, xs = picked // w, picked % w
            positions = torch.stack([xs, ys], dim=1).float() * stride + start
            instance = keep.repeat_interleave(k)
            parts.append(BankEntries(
                feats=mask_feats[b, :, ys, xs].t().float(),
                positions=positions,
                offsets=centers[instance] - positions,
                image_ids=image_ids[b].expand(len(picked)),
                classes=inst.gt_classes[instance],
            ))
        if not parts:
            return BankEntries.empty(mask_feats.shape[1], mask_feats.device)
        return BankEntries.cat(parts)
