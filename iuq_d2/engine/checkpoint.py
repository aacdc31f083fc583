"""Checkpointers: one for training, whose files are never seen half-written, and a strict one
for evaluation, prediction, visualisation and export, which loads every weight or fails."""

import os
import tempfile
from typing import IO, Any, Callable, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

from ..modeling.iuq.iuq_condinst import TRAINING_ONLY_PREFIXES

# What a checkpoint may lack, or hold beyond the model, without changing the model's predictions:
# the training-only state of the IUQ criteria (the bank), AdelaiDet's semantic-segmentation head
# (a training-only loss, MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON), and two buffers of the mask
# head that the config sets (sizes_of_interest) or training counts (_iter).
OPTIONAL_PREFIXES = TRAINING_ONLY_PREFIXES + ("mask_branch.seg_head.", "mask_branch.logits.")
OPTIONAL_KEYS = ("mask_head._iter", "mask_head.sizes_of_interest")
# Keys named per kind in an error; its count says how many there are in all.
MAX_NAMED_KEYS = 12


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through a temporary sibling and a rename.

    A job killed mid-write (preemption, time limit, full disk) leaves the previous version of
    ``path`` intact instead of a truncated file that ``--resume`` would then fail to load.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """Saves checkpoints and the ``last_checkpoint`` tag with :func:`atomic_write`."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not hold every weight of the model it is loaded into."""


def _optional(key: str) -> bool:
    return key in OPTIONAL_KEYS or key.startswith(OPTIONAL_PREFIXES)


def _named(keys: List[str]) -> str:
    more = len(keys) - MAX_NAMED_KEYS
    return ", ".join(keys[:MAX_NAMED_KEYS]) + (f", ... ({more} more)" if more > 0 else "")


def check_complete(incompatible: _IncompatibleKeys, num_model_keys: int) -> None:
    """Raise :class:`CheckpointMismatchError` naming, with their counts, the keys of
    ``incompatible`` (what fvcore could not load) that are not optional: missing from the
    checkpoint, not in the model, or of another shape.

    A weight left at its initial value evaluates to an AP near zero without any error.
    """
    shapes = {key: (ckpt, model) for key, ckpt, model in incompatible.incorrect_shapes}
    missing = sorted(k for k in incompatible.missing_keys if k not in shapes and not _optional(k))
    unexpected = sorted(k for k in incompatible.unexpected_keys if not _optional(k))
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} of the model's {num_model_keys} keys are missing: " + _named(missing)
        )
    if unexpected:
        parts.append(f"{len(unexpected)} keys are not in the model: {_named(unexpected)}")
    if shapes:
        reshaped = [f"{k} {shapes[k][0]} (model {shapes[k][1]})" for k in sorted(shapes)]
        parts.append(f"{len(shapes)} keys have another shape: {_named(reshaped)}")
    if parts:
        raise CheckpointMismatchError(
            "; ".join(parts) + ". Is it a checkpoint of this config (MODEL.META_ARCHITECTURE, "
            "MODEL.FCOS.NUM_CLASSES, MODEL.RESNETS.DEPTH, ...), or of another code base that "
            "needs converting?"
        )


class StrictCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that loads every weight of the model, or raises
    :class:`CheckpointMismatchError`; an empty path too. For evaluation, prediction,
    visualisation and export.

    detectron2's checkpointer logs the keys it could not load and goes on, as training from
    ImageNet weights needs (the heads are new): :class:`AtomicCheckpointer` keeps that.
    """

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        if not path:
            raise CheckpointMismatchError(
                "No weights to load (MODEL.WEIGHTS is empty): the model would predict with its "
                "initial, random, weights"
            )
        try:
            return super().load(path, checkpointables)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(
                f"Checkpoint {path} does not fit the model: {e}"
            ) from None

    def _load_model(self, checkpoint: Dict[str, Any]) -> _IncompatibleKeys:
        incompatible = super()._load_model(checkpoint)
        check_complete(incompatible, len(self.model.state_dict()))
        return incompatible
