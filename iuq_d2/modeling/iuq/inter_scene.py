"""The inter-scene (dataset-level) uniqueness criterion: the queries of a batch must stay silent
on the instance pixels of other images, from this global batch and from the query bank."""

import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...layers import dynamic_mlp
from ...layers.cell_centers import fcos_cell_center
from ...layers.gradient_projection import project_conflicting_gradient
from ...layers.inter_scene import (
    entry_inputs,
    fold_dynamic_params,
    inter_scene_focal_loss,
    inter_scene_mean_sq_prob,
)
from ...layers.losses import dice_from_terms
from ...utils.comm import all_gather_rows
from ..condinst.dynamic_mask_head import DynamicMaskHead
from .query_bank import BankEntries, QueryBank

COORD_MODES = ("instance_centered", "overlay", "random")
NORMALIZATIONS = ("pairs", "query_image")
REFERENCES = ("zero", "own")
LOSS_FORMS = ("focal", "dice", "confident")


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
    return torch.tensor(ids, dtype=torch.int64, device=device)


def cell_masks(bitmasks_full: Tensor, feat_shape: Tuple[int, int], stride: int) -> Tensor:
    """[G, h, w]: whether each stride-``stride`` cell's centre pixel lies on each instance of
    the full-resolution masks [G, H, W], the one rule by which a cell belongs to an
    instance here."""
    start = stride // 2
    h, w = feat_shape
    return bitmasks_full[:, start::stride, start::stride][:, :h, :w]


@torch.no_grad()
def random_subset(num: int, cap: int, device: torch.device) -> Optional[Tensor]:
    """Indices of ``cap`` of ``num`` rows drawn at random (on the CPU generator, so that a run
    draws the same on any device), or None when ``cap`` is negative (no cap) or not below
    ``num``."""
    if not 0 <= cap < num:
        return None
    return torch.randperm(num, device="cpu")[:cap].to(device)


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
        if tiny.any():
            cx = (centers[tiny, 0] // stride).long().clamp(0, w - 1)
            cy = (centers[tiny, 1] // stride).long().clamp(0, h - 1)
            cells[tiny.nonzero().squeeze(1), cy * w + cx] = 1.0
        keep = torch.nonzero(cells.sum(dim=1) > 0).squeeze(1)
        if len(keep) > 0:
            cells = cells[keep]
            enough = cells.sum(dim=1) >= k
            picked = torch.empty((len(keep), k), dtype=torch.int64, device=cells.device)
            if enough.any():
                picked[enough] = torch.multinomial(cells[enough], k, replacement=False)
            if (~enough).any():
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

    Negatives of one step are a sample of the bank (entries at most ``max_age`` iterations old)
    and the instance pixels of the current global batch (at most ``max_batch_entries`` of them
    evaluated; all enter the bank); at most ``max_queries`` queries, a random subset, are
    evaluated against them. With ``batch_entry_grad`` the pixels of this process's other
    images stay attached to the mask branch, so the representation, not only the queries, is
    trained to tell instances of different images apart; without ``query_grad`` the
    representation is all the loss trains (and the bank, constant, is not sampled).

    ``loss_form`` "focal" is the paper's: a focal loss of every pair against 0, weighted by
    ``weight``. "dice" instead adds each query's firing on the foreign pixels to the
    denominator of its own dice loss, as ``weight`` other images' worth of background, so the
    foreign pixels are penalised in the currency of the mask loss and the query cannot buy
    silence there with its own object's logits: lowering them lowers its dice too.
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
        max_age: int,
        max_batch_entries: int,
        batch_entry_grad: bool,
        query_grad: bool = True,
        max_queries: int = -1,
        reference: str = "zero",
        normalization: str,
        impl: str,
        detach_output_bias: bool = False,
        exclude_own_footprint: bool = False,
        same_class_only: bool = False,
        loss_form: str = "focal",
        project_conflict: bool = False,
        min_own_dice: float = 0.0,
        mask_out_stride: int = 4,
        confident_threshold: float = 0.8,
        own_image_weight: float = 0.0,
    ):
        super().__init__()
        self.bank = bank
        self.layer_shapes = list(layer_shapes)
        self.sizes_of_interest = list(sizes_of_interest)
        self.use_rel_coords = use_rel_coords
        self.feat_stride = feat_stride
        self.weight = weight
        self.warmup_iters = warmup_iters
        self.alpha = alpha
        self.gamma = gamma
        self.coords = coords
        self.pixels_per_instance = pixels_per_instance
        self.num_negatives = num_negatives
        self.max_age = max_age
        self.max_batch_entries = max_batch_entries
        self.batch_entry_grad = batch_entry_grad
        self.query_grad = query_grad
        self.max_queries = max_queries
        self.reference = reference
        self.normalization = normalization
        self.impl = impl
        self.detach_output_bias = detach_output_bias
        self.exclude_own_footprint = exclude_own_footprint
        self.same_class_only = same_class_only
        self.loss_form = loss_form
        self.confident_threshold = confident_threshold
        self.project_conflict = project_conflict
        self._conflict_frac: Optional[Tensor] = None
        self.min_own_dice = min_own_dice
        self.mask_out_stride = mask_out_stride
        self.own_image_weight = own_image_weight

    @classmethod
    def from_config(cls, cfg, mask_head: DynamicMaskHead, feat_channels: int, feat_stride: int):
        inter = cfg.MODEL.IUQ.INTER
        if inter.COORDS not in COORD_MODES:
            raise ValueError(
                f"MODEL.IUQ.INTER.COORDS must be one of {COORD_MODES}, got {inter.COORDS!r}"
            )
        if inter.NORMALIZATION not in NORMALIZATIONS:
            raise ValueError(
                f"MODEL.IUQ.INTER.NORMALIZATION must be one of {NORMALIZATIONS}, "
                f"got {inter.NORMALIZATION!r}"
            )
        if inter.REFERENCE not in REFERENCES:
            raise ValueError(
                f"MODEL.IUQ.INTER.REFERENCE must be one of {REFERENCES}, got {inter.REFERENCE!r}"
            )
        if inter.REFERENCE == "own" and inter.PIXELS_PER_INSTANCE == 0:
            raise ValueError(
                "MODEL.IUQ.INTER.REFERENCE 'own' needs the query's own instance pixels: "
                "MODEL.IUQ.INTER.PIXELS_PER_INSTANCE must be > 0"
            )
        if inter.EXCLUDE_OWN_FOOTPRINT and inter.NORMALIZATION != "pairs":
            raise ValueError(
                "MODEL.IUQ.INTER.EXCLUDE_OWN_FOOTPRINT needs NORMALIZATION 'pairs', "
                f"got {inter.NORMALIZATION!r}"
            )
        if inter.SAME_CLASS_ONLY and inter.NORMALIZATION != "pairs":
            raise ValueError(
                "MODEL.IUQ.INTER.SAME_CLASS_ONLY needs NORMALIZATION 'pairs', "
                f"got {inter.NORMALIZATION!r}"
            )
        if inter.LOSS_FORM not in LOSS_FORMS:
            raise ValueError(
                f"MODEL.IUQ.INTER.LOSS_FORM must be one of {LOSS_FORMS}, got {inter.LOSS_FORM!r}"
            )
        if inter.LOSS_FORM == "dice" and (
            inter.REFERENCE != "zero"
            or inter.NORMALIZATION != "pairs"
            or inter.EXCLUDE_OWN_FOOTPRINT
            or inter.SAME_CLASS_ONLY
            or inter.DETACH_OUTPUT_BIAS
        ):
            raise ValueError(
                "MODEL.IUQ.INTER.LOSS_FORM 'dice' takes the default REFERENCE ('zero'), "
                "NORMALIZATION ('pairs'), EXCLUDE_OWN_FOOTPRINT, SAME_CLASS_ONLY and "
                f"DETACH_OUTPUT_BIAS (False), got {inter.REFERENCE!r}, "
                f"{inter.NORMALIZATION!r}, {inter.EXCLUDE_OWN_FOOTPRINT}, "
                f"{inter.SAME_CLASS_ONLY}, {inter.DETACH_OUTPUT_BIAS}"
            )
        if not inter.QUERY_GRAD and not inter.BATCH_ENTRY_GRAD:
            raise ValueError(
                "MODEL.IUQ.INTER.QUERY_GRAD False leaves the loss only the representation to "
                "train, through the in-batch pixels: it needs MODEL.IUQ.INTER.BATCH_ENTRY_GRAD "
                "True (otherwise loss_inter has no gradient at all)"
            )
        if not 0.0 <= inter.MIN_OWN_DICE <= 1.0:
            raise ValueError(
                f"MODEL.IUQ.INTER.MIN_OWN_DICE must be in [0, 1], got {inter.MIN_OWN_DICE}"
            )
        if inter.MIN_OWN_DICE > 0 and inter.LOSS_FORM == "dice":
            raise ValueError(
                "MODEL.IUQ.INTER.MIN_OWN_DICE needs LOSS_FORM 'focal' or 'confident', "
                f"got {inter.LOSS_FORM!r}"
            )
        if not 0.0 < inter.CONFIDENT_THRESHOLD < 1.0:
            raise ValueError(
                "MODEL.IUQ.INTER.CONFIDENT_THRESHOLD must be in (0, 1), "
                f"got {inter.CONFIDENT_THRESHOLD}"
            )
        for key in ("PIXELS_PER_INSTANCE", "NUM_NEGATIVES", "OWN_IMAGE_WEIGHT"):
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
            "max_age": inter.MAX_AGE_ITERS,
            "max_batch_entries": inter.MAX_BATCH_ENTRIES,
            "batch_entry_grad": inter.BATCH_ENTRY_GRAD,
            "query_grad": inter.QUERY_GRAD,
            "max_queries": inter.MAX_QUERIES,
            "reference": inter.REFERENCE,
            "normalization": inter.NORMALIZATION,
            "impl": inter.IMPL,
            "detach_output_bias": inter.DETACH_OUTPUT_BIAS,
            "exclude_own_footprint": inter.EXCLUDE_OWN_FOOTPRINT,
            "same_class_only": inter.SAME_CLASS_ONLY,
            "loss_form": inter.LOSS_FORM,
            "project_conflict": inter.PROJECT_CONFLICT,
            "min_own_dice": inter.MIN_OWN_DICE,
            "mask_out_stride": mask_head.mask_out_stride,
            "confident_threshold": inter.CONFIDENT_THRESHOLD,
            "own_image_weight": inter.OWN_IMAGE_WEIGHT,
        }

    def warmup_factor(self, iteration: int) -> float:
        if self.warmup_iters <= 0:
            return 1.0
        return min(iteration / self.warmup_iters, 1.0)

    def collect(
        self,
        mask_feats: Tensor,
        gt_instances: List[Instances],
        image_ids: Tensor,
        with_grad: bool = False,
    ) -> Tuple[BankEntries, Tensor]:
        """``pixels_per_instance`` instance pixels of every ground-truth instance of this
        process's images, their features detached unless ``with_grad``, and the index of each
        one's instance among the batch's concatenated instances."""
        images, rows, cols, instances = sample_instance_cells(
            gt_instances, mask_feats.shape[-2:], self.feat_stride, self.pixels_per_instance
        )
        feats = mask_feats[images, :, rows, cols].float()
        positions = fcos_cell_center(torch.stack([cols, rows], dim=1), self.feat_stride).float()
        if len(instances) > 0:
            centers = torch.cat([x.gt_boxes.get_centers() for x in gt_instances])[instances]
            classes = torch.cat([x.gt_classes for x in gt_instances])[instances]
        else:
            centers = positions.clone()
            classes = torch.full_like(images, -1)
        entries = BankEntries(
            feats=feats if with_grad else feats.detach(),
            positions=positions,
            offsets=centers - positions,
            image_ids=image_ids[images],
            classes=classes,
        )
        return entries, instances

    def own_logits(
        self, queries: Instances, local: BankEntries, instances: Tensor, num_instances: int
    ) -> Tuple[Tensor, Tensor]:
        """Each query's mean logit over the cells of its own instance that :meth:`collect`
        sampled (differentiable in its parameters), and whether it has any (an instance with an
        empty mask has none)."""
        k = self.pixels_per_instance
        params = queries.mask_head_params
        device = params.device
        first = torch.full((num_instances,), -1, dtype=torch.int64, device=device)
        # sample_instance_cells writes k consecutive cells per instance.
        first[instances[::k]] = torch.arange(0, len(instances), k, device=device)
        start = first[queries.gt_inds]
        has_own = start >= 0
        if not has_own.any():
            return params.new_zeros(len(queries)), has_own
        cells = start.clamp(min=0)[:, None] + torch.arange(k, device=device)[None, :]  # [Q, k]
        # The loss's own folding of the relative coordinates, on each query's own cells.
        weights, biases = fold_dynamic_params(
            params,
            queries.locations,
            self.query_soi(queries),
            self.layer_shapes,
            self.use_rel_coords,
            params.dtype,
        )
        inputs = entry_inputs(local.feats, local.positions, self.use_rel_coords, params.dtype)
        logits = dynamic_mlp(inputs[cells].transpose(1, 2), weights, biases)
        return logits[:, 0, :].mean(dim=1), has_own

    def query_soi(self, queries: Instances) -> Tensor:
        """[Q] size of interest of each query's FPN level (its relative coordinates' scale)."""
        soi = torch.tensor(
            self.sizes_of_interest, dtype=torch.float32, device=queries.locations.device
        )
        return soi[queries.fpn_levels]

    def off_own_footprint(
        self,
        queries: Instances,
        gt_instances: List[Instances],
        query_anchors: Tensor,
        pixel_anchors: Tensor,
        feat_shape: Tuple[int, int],
    ) -> Tensor:
        """[Q, N] bool: whether entry n, placed in query q's image where the pair's relative
        coordinates put it, falls off q's ground-truth instance. On the instance the query
        must fire in its own image, so a look-alike pixel of another image there is a negative
        that contradicts the mask loss; off it, the two losses ask for the same thing.

        The pair's relative coordinates are ``query_anchors[q] - pixel_anchors[n]``, those of
        the pixel at ``locations[q] - query_anchors[q] + pixel_anchors[n]`` of q's own image:
        the entry's own position under "overlay", its place relative to its instance's centre
        moved to the query's location under "instance_centered", the query's location plus the
        entry's random anchor under "random". That pixel counts as on the instance when the
        centre of its stride-``feat_stride`` cell is (as :func:`sample_instance_cells` counts).
        """
        h, w = feat_shape
        stride = self.feat_stride
        cells = torch.cat(
            [cell_masks(x.gt_bitmasks_full, feat_shape, stride) for x in gt_instances]
        ).flatten(1)
        shift = queries.locations.float() - query_anchors.float()
        anchors = pixel_anchors.float()
        col = torch.div(shift[:, 0:1] + anchors[None, :, 0], stride, rounding_mode="floor").long()
        row = torch.div(shift[:, 1:2] + anchors[None, :, 1], stride, rounding_mode="floor").long()
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        index = row.clamp(0, h - 1) * w + col.clamp(0, w - 1)
        on_own = cells[queries.gt_inds[:, None], index].bool() & inside
        return ~on_own

    def forward(
        self,
        mask_feats: Tensor,
        queries: Instances,
        gt_instances: List[Instances],
        image_ids: Tensor,
        iteration: int,
        mask_dice: Optional[Tuple[Tensor, Tensor]] = None,
        loss_mask: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """``loss_inter`` of the queries against bank samples and this global batch's instance
        pixels; afterwards the batch's pixels join the bank. The dice form needs the terms of
        the queries' dice losses (``CondInstTrainOutputs.mask_dice``), ``project_conflict``
        the mask loss."""
        num_queries = len(queries)
        if self.project_conflict:
            queries = self.protect_mask_loss(queries, loss_mask)
        local, instances = self.collect(
            mask_feats, gt_instances, image_ids, with_grad=self.batch_entry_grad
        )
        gathered, counts = all_gather_rows(*(t.detach() for t in local.as_tuple()))
        current = BankEntries(*gathered)
        evaluated = current
        if self.batch_entry_grad and len(counts) > 1:
            # This process's rows of the gathered batch are replaced by the attached ones.
            rank = torch.distributed.get_rank()
            start, end = sum(counts[:rank]), sum(counts[: rank + 1])
            evaluated = BankEntries.cat([current[:start], local, current[end:]])
        elif self.batch_entry_grad:
            evaluated = local
        keep = random_subset(len(evaluated), self.max_batch_entries, mask_feats.device)
        if keep is not None:
            evaluated = evaluated[keep]
        query_index = torch.arange(num_queries, device=mask_feats.device)
        keep = random_subset(num_queries, self.max_queries, mask_feats.device)
        if keep is not None:
            query_index = keep
            queries = queries[query_index]
        if self.min_own_dice > 0:
            queries = queries[self.fits_own_mask(mask_dice, query_index)]
        if self.reference == "own":
            num_instances = sum(len(x) for x in gt_instances)
            own_logit, has_own = self.own_logits(queries, local, instances, num_instances)
            queries, own_logit = queries[has_own], own_logit[has_own]
        # Without gradient into the queries the bank's constant entries would teach nothing.
        num_sampled = self.num_negatives if self.query_grad else 0
        sampled, ages = self.bank.sample_with_age(num_sampled, iteration, self.max_age)
        negatives = BankEntries.cat([sampled, evaluated])

        if self.coords == "instance_centered":
            # The query sits at the centre of the pixel's instance: rel = offset / soi.
            query_anchors = torch.zeros_like(queries.locations)
            pixel_anchors = -negatives.offsets
        elif self.coords == "random":
            # The query sits at a random point within the smallest size of interest of the
            # pixel, drawn per entry: near the object, though not at its centre.
            reach = float(min(self.sizes_of_interest))
            query_anchors = torch.zeros_like(queries.locations)
            pixel_anchors = (torch.rand_like(negatives.positions) * 2.0 - 1.0) * reach
        else:
            query_anchors = queries.locations
            pixel_anchors = negatives.positions
        soi = self.query_soi(queries)
        params = queries.mask_head_params
        if self.reference == "own":
            # Score each foreign logit relative to the query's mean logit on its own instance:
            # with that mean folded into the output bias (biases come last in the parameters)
            # the bias cancels, so lowering all of the query's logits, its own object's too,
            # no longer silences other images; only telling them apart does.
            params = torch.cat([params[:, :-1], params[:, -1:] - own_logit[:, None]], dim=1)
        pair_mask = None
        if self.exclude_own_footprint:
            pair_mask = self.off_own_footprint(
                queries, gt_instances, query_anchors, pixel_anchors, mask_feats.shape[-2:]
            )
        if not self.query_grad:
            params = params.detach()
        if self.same_class_only:
            query_classes = torch.cat([x.gt_classes for x in gt_instances])[queries.gt_inds]
            same = query_classes[:, None] == negatives.classes[None, :]
            pair_mask = same if pair_mask is None else pair_mask & same
        if self.detach_output_bias:
            # The last number of a query's parameters is its output bias (biases come last).
            params = torch.cat([params[:, :-1], params[:, -1:].detach()], dim=1)
        pair_args = (
            params,
            query_anchors,
            soi,
            image_ids[queries.im_inds],
            negatives.feats,
            pixel_anchors,
            negatives.image_ids,
            self.layer_shapes,
        )
        scale = self.weight * self.warmup_factor(iteration)
        if self.loss_form == "dice":
            mean_sq, stats = inter_scene_mean_sq_prob(*pair_args, self.use_rel_coords)
            per_image = len(current) / (len(gt_instances) * comm.get_world_size())
            loss = self.dice_form_loss(
                mean_sq * (scale * per_image), mask_dice, query_index, num_queries
            )
        else:
            loss, stats = inter_scene_focal_loss(
                *pair_args,
                use_rel_coords=self.use_rel_coords,
                alpha=self.alpha,
                gamma=self.gamma,
                normalization=self.normalization,
                impl=self.impl,
                pair_mask=pair_mask,
                pair_loss=self.loss_form,
                threshold=self.confident_threshold,
            )
            loss = loss * scale
        losses = {"loss_inter": loss}
        if self.own_image_weight > 0:
            losses["loss_intra"] = self.own_image_weight * self.own_image_loss(
                queries, local, instances, gt_instances
            )
        self.bank.enqueue(current, iteration)

        storage = get_event_storage()
        storage.put_scalar("iuq/bank_fill", self.bank.num_filled / self.bank.capacity)
        storage.put_scalar("iuq/inter_frac_firing", stats.frac_firing.item())
        storage.put_scalar("iuq/inter_pairs", stats.num_pairs.item())
        storage.put_scalar("iuq/entries_this_rank", len(local))
        storage.put_scalar("iuq/entries_gathered", len(current))
        storage.put_scalar("iuq/entries_evaluated", len(evaluated))
        storage.put_scalar("iuq/queries_evaluated", len(queries))
        if len(ages) > 0:
            storage.put_scalar("iuq/bank_age_mean", ages.float().mean().item())
            storage.put_scalar("iuq/bank_age_max", ages.max().item())
        return losses

    def own_image_loss(
        self,
        queries: Instances,
        local: BankEntries,
        instances: Tensor,
        gt_instances: List[Instances],
    ) -> Tensor:
        """Focal loss of ``queries`` on ``local``'s cells of the other instances of their own
        image, at the cells' own positions: the logits the dense mask head gives there."""
        counts = torch.tensor([len(x) for x in gt_instances], device=instances.device)
        images = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        entry_images = images[instances]
        keep = random_subset(len(local), self.max_batch_entries, instances.device)
        if keep is not None:
            local, instances, entry_images = local[keep], instances[keep], entry_images[keep]
        pair_mask = (entry_images[None, :] == queries.im_inds[:, None]) & (
            instances[None, :] != queries.gt_inds[:, None]
        )
        # Every pair here is of one image: the image test of the loss is passed with ids that
        # never match, and the pair mask alone picks the pairs.
        loss, stats = inter_scene_focal_loss(
            queries.mask_head_params,
            queries.locations,
            self.query_soi(queries),
            torch.zeros_like(queries.gt_inds),
            local.feats,
            local.positions,
            torch.ones_like(instances),
            self.layer_shapes,
            use_rel_coords=self.use_rel_coords,
            alpha=self.alpha,
            gamma=self.gamma,
            impl=self.impl,
            pair_mask=pair_mask,
        )
        storage = get_event_storage()
        storage.put_scalar("iuq/intra_frac_firing", stats.frac_firing.item())
        storage.put_scalar("iuq/intra_pairs", stats.num_pairs.item())
        return loss

    def fits_own_mask(
        self, mask_dice: Optional[Tuple[Tensor, Tensor]], query_index: Tensor
    ) -> Tensor:
        """[Q] bool over the evaluated queries: whether each one's dice coefficient on its own
        mask this step reaches ``min_own_dice``."""
        if mask_dice is None:
            return torch.zeros_like(query_index, dtype=torch.bool)
        inter, union = (t[query_index].detach() for t in mask_dice)
        return 1.0 - dice_from_terms(inter, union) >= self.min_own_dice

    def protect_mask_loss(self, queries: Instances, loss_mask: Optional[Tensor]) -> Instances:
        """The queries with their parameters behind :func:`project_conflicting_gradient`
        against the mask loss's gradient: what this loss sends into each query's dynamic-head
        parameters (the controller's output) no longer works against that query's mask loss.
        That holds at the controller's output only: the shared weights behind it mix the
        queries' gradients, and gradient into the mask branch is not projected."""
        if loss_mask is None:
            raise ValueError(
                "MODEL.IUQ.INTER.PROJECT_CONFLICT needs the mask loss (loss_mask) in the "
                "inter-scene criterion's forward"
            )
        if self._conflict_frac is not None:
            # Measured in the previous step's backward; read here, outside the autograd
            # engine's thread, so that the backward does not wait on the device.
            get_event_storage().put_scalar("iuq/inter_conflict_frac", self._conflict_frac.item())
            self._conflict_frac = None
        params = queries.mask_head_params
        if not (loss_mask.requires_grad and params.requires_grad):
            return queries
        (protected,) = torch.autograd.grad(loss_mask, params, retain_graph=True, allow_unused=True)
        if protected is None:
            return queries
        queries = queries[:]
        queries.mask_head_params = project_conflicting_gradient(
            params, protected, self._keep_conflict_frac
        )
        return queries

    def _keep_conflict_frac(self, frac: Tensor) -> None:
        self._conflict_frac = frac.detach()

    def dice_form_loss(
        self,
        foreign: Tensor,
        mask_dice: Optional[Tuple[Tensor, Tensor]],
        query_index: Tensor,
        num_queries: int,
    ) -> Tensor:
        """What the foreign pixels add to the mask loss: the evaluated queries' dice with
        ``foreign`` ([Q], a mean squared probability times the entries it stands for) in the
        denominator, minus their plain dice, summed and divided by all queries, so that
        ``loss_mask + loss_inter`` is exactly the mean dice with foreign pixels for them.

        An entry is one stride-``feat_stride`` cell, that many mask pixels squared.
        """
        if mask_dice is None:
            return foreign.sum() * 0.0
        inter, union = mask_dice[0][query_index], mask_dice[1][query_index]
        cell_area = (self.feat_stride / self.mask_out_stride) ** 2
        joint = dice_from_terms(inter, union + foreign * cell_area)
        return (joint - dice_from_terms(inter, union)).sum() / num_queries
