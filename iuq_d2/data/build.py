"""The training dataset mapper that ``INPUT.DATASET_MAPPER_NAME`` names, and its check
against the model.

The name, not the model's meta-architecture, decides what the loader produces, so that the
data side of the data/model contract is stated in the config (as Mask2Former does); the check
turns a mismatch into an error at set-up that names the key.
"""

from typing import Dict, Type

from detectron2.config import CfgNode

from .iuq_mapper import IUQDatasetMapper
from .mapper import CondInstDatasetMapper

__all__ = ["DATASET_MAPPERS", "check_mapper_views", "train_mapper_class"]

# INPUT.DATASET_MAPPER_NAME -> mapper class.
DATASET_MAPPERS: Dict[str, Type[CondInstDatasetMapper]] = {
    "condinst": CondInstDatasetMapper,
    "iuq": IUQDatasetMapper,
}


def train_mapper_class(cfg: CfgNode) -> Type[CondInstDatasetMapper]:
    """The class of ``INPUT.DATASET_MAPPER_NAME``, or a ValueError naming the key."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPERS:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME must be one of {sorted(DATASET_MAPPERS)}, got {name!r}"
        )
    return DATASET_MAPPERS[name]


def check_mapper_views(cfg: CfgNode, mapper_class: Type[CondInstDatasetMapper]) -> None:
    """Raise a ValueError naming INPUT.DATASET_MAPPER_NAME unless the mapper makes the
    equivariance views exactly when the model trains on them: without views IUQCondInst's
    equivariance cannot train, and views nothing reads cost loading time and, in "paired"
    mode, half the dataset images per step."""
    needs_views = cfg.MODEL.META_ARCHITECTURE == "IUQCondInst" and cfg.MODEL.IUQ.EQUI.ENABLED
    if needs_views == mapper_class.makes_views:
        return
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if needs_views:
        raise ValueError(
            f"IUQCondInst with MODEL.IUQ.EQUI.ENABLED trains on equivariance views, "
            f"which INPUT.DATASET_MAPPER_NAME {name!r} does not make: set it to "
            "'iuq' (or MODEL.IUQ.EQUI.ENABLED False)"
        )
    raise ValueError(
        f"INPUT.DATASET_MAPPER_NAME {name!r} makes equivariance views, which only "
        f"IUQCondInst with MODEL.IUQ.EQUI.ENABLED trains on (MODEL.META_ARCHITECTURE "
        f"is {cfg.MODEL.META_ARCHITECTURE!r}, MODEL.IUQ.EQUI.ENABLED "
        f"{cfg.MODEL.IUQ.EQUI.ENABLED}): set it to 'condinst'"
    )
