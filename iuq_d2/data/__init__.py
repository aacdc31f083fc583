"""Datasets and data mapping of iuq_d2. Importing this module registers ``shapes_train`` and
``shapes_val`` (generated lazily, on their first load)."""

from .datasets import (
    SHAPES_DATASETS,
    check_num_classes,
    default_cache_root,
    ensure_shapes,
    load_coco_json_checked,
    register_builtin_datasets,
    register_custom_coco,
)
from .mapper import CondInstDatasetMapper
from .shapes import SHAPES_CLASSES, generate_shapes

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_DATASETS",
    "CondInstDatasetMapper",
    "check_num_classes",
    "default_cache_root",
    "ensure_shapes",
    "generate_shapes",
    "load_coco_json_checked",
    "register_builtin_datasets",
    "register_custom_coco",
]

register_builtin_datasets()
