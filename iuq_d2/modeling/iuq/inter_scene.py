"""The inter-scene (dataset-level) uniqueness criterion: the queries of a batch must stay silent
on the instance pixels of other images, from this global batch and from the query bank."""

import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...layers.cell_centers import fcos_cell_center
from ...layers.inter_scene_loss import IMPLS, NORMALIZATIONS, inter_scene_focal_loss
from ...utils.comm import RowGather
from ..condinst.dynamic_mask_head import DynamicMaskHead
from .query_bank import BankEntries, QueryBank

COORD_MODES = ("instance_centered", "overlay")
# detectron2's PeriodicWriter writes every 20 iterations: statistics that must be read back from
# the device are logged on those iterations only.
LOG_PERIOD = 20


def image_ids_of(batched_inputs: List[dict], device: torch.device) -> Tensor:
    """The dataset's ``image_id`` of each input (a hash of its file name when absent): the
    identity that keeps a query from being penalised on its own image's pixels, including
    pixels that an earlier epoch put in the bank."""
    ids = []
    for x in batched_inputs:
        image_id = x.get("image_id")
        if not isinstance(image_id, int):
            image_id = zlib.crc32(
                str(image_id if image_id is not None else x["file_name"]).encode()
            )
        ids.append(image_id)
    ids = torch.tensor(ids, dtype=torch.int64)
    if device.type == "cuda":  # from pinned memory the copy does not wait for the device
        return ids.pin_memory().to(device, non_blocking=True)
    return ids.to(device)


def cell_masks(bitmasks_full: Tensor, feat_shape: Tuple[int, int], stride: int) -> Tensor:
    """[G, h, w]: whether each stride-``stride`` cell's centre pixel lies on each instance of
    the full-resolution masks [G, H, W], the one rule by which a cell belongs to an
    instance here."""
    start = stride // 2
    h, w = feat_shape
    return bitmasks_full[:, start::stride, start::stride][:, :h, :w]


@torch.no_grad()
def random_subset(num: int, cap: int, device: torch.device) -> Optional[Tensor]:
    """Indices of ``cap`` of ``num`` rows drawn at random on ``device`` (no host sync), or None
    when ``cap`` is negative (no cap) or not below ``num``."""
    if not 0 <= cap < num:
        return None
    return torch.randperm(num, device=device)[:cap]


def sample_instance_cells(
    gt_instances: List[Instances], feat_shape: Tuple[int, int], stride: int, k: int
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``k`` cells of the stride-``stride`` feature map per ground-truth instance, drawn among
    the cells whose centre pixel it covers (with replacement when it covers fewer than k).

    An instance too small to cover any cell centre contributes the cell holding its box centre,
    so small objects are represented too. Returns, per sampled cell: its image index, row,
    column, and the index of its instance within the batch's concatenated instances.
    """
    h, w = feat_shape
    images, rows, cols, instances = [], [], [], []
    num_before = 0
    for b, inst in enumerate(gt_instances):
        if len(inst) == 0 or k == 0:
            num_before += len(inst)
            continue
        cells = cell_masks(inst.gt_bitmasks_full, feat_shape, stride).flatten(1).float()
        centers = inst.gt_boxes.get_centers()
        tiny = (cells.sum(dim=1) == 0) & (inst.gt_bitmasks_full.flatten(1).amax(dim=1) > 0)
        cx = (centers[:, 0] // stride).long().clamp(0, w - 1)
        cy = (centers[:, 1] // stride).long().clamp(0, h - 1)
        rows_of = torch.arange(len(cells), device=cells.device)
        cells[rows_of, cy * w + cx] += tiny.float()  # tiny: 0 there before, 1 now
        keep = torch.nonzero(cells.sum(dim=1) > 0).squeeze(1)
        if len(keep) > 0:
            cells = cells[keep]
            enough = cells.sum(dim=1) >= k
            picked = torch.empty((len(keep), k), dtype=torch.int64, device=cells.device)
            # Both draws whatever the split (an empty one draws nothing): no host sync to test.
            picked[enough] = torch.multinomial(cells[enough], k, replacement=False)
            picked[~enough] = torch.multinomial(cells[~enough], k, replacement=True)
            picked = picked.flatten()
            images.append(torch.full_like(picked, b))
            rows.append(picked // w)
            cols.append(picked % w)
            instances.append(keep.repeat_interleave(k) + num_before)
        num_before += len(inst)
    if not images:
        empty = torch.zeros(0, dtype=torch.int64, device=gt_instances[0].gt_boxes.device)
        return empty, empty, empty, empty
    return torch.cat(images), torch.cat(rows), torch.cat(cols), torch.cat(instances)


class InterSceneCriterion(nn.Module):
    """Owns the query bank, the collection of this batch's instance pixels, the loss and its
    logging.

    Negatives of one step are a sample of the bank and the instance pixels of the current
    global batch (at most ``max_batch_entries`` of them evaluated; all enter the bank); at most
    ``max_queries`` queries, a random subset, are evaluated against them. Entries are constants:
    the loss trains the queries (the FCOS towers and the controller).
    """

    @configurable
    def __init__(
        self,
        *,
        bank: QueryBank,
        layer_shapes: Sequence[Tuple[int, int]],
        sizes_of_interest: Sequence[int],
        use_rel_coords: bool,
        feat_stride: int,
        weight: float,
        warmup_iters: int,
        alpha: float,
        gamma: float,
        coords: str,
        pixels_per_instance: int,
        num_negatives: int,
        max_batch_entries: int,
        max_queries: int,
        normalization: str,
        impl: str,
    ):
        super().__init__()
        self.bank = bank
        self.gather = RowGather()
        self.layer_shapes = list(layer_shapes)
        soi = torch.tensor(list(sizes_of_interest), dtype=torch.float32)
        self.register_buffer("sizes_of_interest", soi, persistent=False)
        self.use_rel_coords = use_rel_coords
        self.feat_stride = feat_stride
        self.weight = weight
        self.warmup_iters = warmup_iters
        self.alpha = alpha
        self.gamma = gamma
        self.coords = coords
        self.pixels_per_instance = pixels_per_instance
        self.num_negatives = num_negatives
        self.max_batch_entries = max_batch_entries
        self.max_queries = max_queries
        self.normalization = normalization
        self.impl = impl

    @classmethod
    def from_config(cls, cfg, mask_head: DynamicMaskHead, feat_channels: int, feat_stride: int):
        inter = cfg.MODEL.IUQ.INTER
        for key, choices in (
            ("COORDS", COORD_MODES),
            ("NORMALIZATION", NORMALIZATIONS),
            ("IMPL", IMPLS),
        ):
            if inter[key] not in choices:
                raise ValueError(
                    f"MODEL.IUQ.INTER.{key} must be one of {choices}, got {inter[key]!r}"
                )
        for key in ("PIXELS_PER_INSTANCE", "NUM_NEGATIVES", "WARMUP_ITERS"):
            if inter[key] < 0:
                raise ValueError(f"MODEL.IUQ.INTER.{key} must be >= 0, got {inter[key]}")
        return {
            "bank": QueryBank(inter.BANK_SIZE, feat_channels),
            "layer_shapes": mask_head.layer_shapes,
            "sizes_of_interest": mask_head.sizes_of_interest.tolist(),
            "use_rel_coords": not mask_head.disable_rel_coords,
            "feat_stride": feat_stride,
            "weight": inter.LOSS_WEIGHT,
            "warmup_iters": inter.WARMUP_ITERS,
            "alpha": inter.FOCAL_ALPHA,
            "gamma": inter.FOCAL_GAMMA,
            "coords": inter.COORDS,
            "pixels_per_instance": inter.PIXELS_PER_INSTANCE,
            "num_negatives": inter.NUM_NEGATIVES,
            "max_batch_entries": inter.MAX_BATCH_ENTRIES,
            "max_queries": inter.MAX_QUERIES,
            "normalization": inter.NORMALIZATION,
            "impl": inter.IMPL,
        }

    def warmup_factor(self, iteration: int) -> float:
        if self.warmup_iters <= 0:
            return 1.0
        return min(iteration / self.warmup_iters, 1.0)

    @torch.no_grad()
    def collect(
        self, mask_feats: Tensor, gt_instances: List[Instances], image_ids: Tensor
    ) -> BankEntries:
        """``pixels_per_instance`` instance pixels of every ground-truth instance of this
        process's images, with their features (detached) and geometry."""
        images, rows, cols, instances = sample_instance_cells(
            gt_instances, mask_feats.shape[-2:], self.feat_stride, self.pixels_per_instance
        )
        feats = mask_feats[images, :, rows, cols].float()
        positions = fcos_cell_center(torch.stack([cols, rows], dim=1), self.feat_stride).float()
        if len(instances) > 0:
            centers = torch.cat([x.gt_boxes.get_centers() for x in gt_instances])[instances]
        else:
            centers = positions.clone()
        return BankEntries(
            feats=feats,
            positions=positions,
            offsets=centers - positions,
            image_ids=image_ids[images],
        )

    def query_soi(self, queries: Instances) -> Tensor:
        """[Q] size of interest of each query's FPN level (its relative coordinates' scale)."""
        return self.sizes_of_interest[queries.fpn_levels]

    def forward(
        self,
        mask_feats: Tensor,
        queries: Instances,
        gt_instances: List[Instances],
        image_ids: Tensor,
        iteration: int,
    ) -> Dict[str, Tensor]:
        """``loss_inter`` of the queries against bank samples and this global batch's instance
        pixels; afterwards the batch's pixels join the bank."""
        local = self.collect(mask_feats, gt_instances, image_ids)
        gathered, _ = self.gather(*local.as_tuple())
        current = BankEntries(*gathered)
        evaluated = current
        keep = random_subset(len(evaluated), self.max_batch_entries, mask_feats.device)
        if keep is not None:
            evaluated = evaluated[keep]
        keep = random_subset(len(queries), self.max_queries, mask_feats.device)
        if keep is not None:
            queries = queries[keep]
        negatives = BankEntries.cat([self.bank.sample(self.num_negatives), evaluated])

        if self.coords == "instance_centered":
            # The query sits at the centre of the pixel's instance: rel = offset / soi.
            query_anchors = torch.zeros_like(queries.locations)
            pixel_anchors = -negatives.offsets
        else:
            query_anchors = queries.locations
            pixel_anchors = negatives.positions
        loss, stats = inter_scene_focal_loss(
            queries.mask_head_params,
            query_anchors,
            self.query_soi(queries),
            image_ids[queries.im_inds],
            negatives.feats,
            pixel_anchors,
            negatives.image_ids,
            self.layer_shapes,
            use_rel_coords=self.use_rel_coords,
            alpha=self.alpha,
            gamma=self.gamma,
            normalization=self.normalization,
            impl=self.impl,
        )
        self.bank.enqueue(current)

        storage = get_event_storage()
        if (iteration + 1) % LOG_PERIOD == 0:
            storage.put_scalar("iuq/inter_frac_firing", stats.frac_firing.item())
            storage.put_scalar("iuq/inter_pairs", stats.num_pairs.item())
        storage.put_scalar("iuq/bank_fill", self.bank.num_filled / self.bank.capacity)
        storage.put_scalar("iuq/entries_this_rank", len(local))
        storage.put_scalar("iuq/entries_gathered", len(current))
        storage.put_scalar("iuq/entries_evaluated", len(evaluated))
        storage.put_scalar("iuq/queries_evaluated", len(queries))
        return {"loss_inter": loss * (self.weight * self.warmup_factor(iteration))}
