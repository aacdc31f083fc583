"""Datasets and data mapping of iuq_d2. Importing this module registers the embedded synthetic
splits (``shapes_train``/``_val``, ``cells_train``/``_val``; generated lazily, on first load)."""

from .build import DATASET_MAPPERS, check_mapper_views, train_mapper_class
from .builtin import SHAPES_DATASETS, default_cache_root, ensure_shapes, register_builtin_datasets
from .coco_loader import coco_dataset_dicts, load_coco_json_checked
from .coco_validation import check_coco, coco_thing_classes, read_json
from .datasets import (
    CustomCocoLoader,
    check_num_classes,
    choose_mask_format,
    coco_mask_encodings,
    register_custom_coco,
)
from .iuq_mapper import IUQDatasetMapper
from .mapper import CondInstDatasetMapper
from .shapes import SHAPES_CLASSES, generate_shapes

__all__ = [
    "DATASET_MAPPERS",
    "SHAPES_CLASSES",
    "SHAPES_DATASETS",
    "CondInstDatasetMapper",
    "CustomCocoLoader",
    "IUQDatasetMapper",
    "check_coco",
    "check_mapper_views",
    "check_num_classes",
    "choose_mask_format",
    "coco_dataset_dicts",
    "coco_mask_encodings",
    "coco_thing_classes",
    "default_cache_root",
    "ensure_shapes",
    "generate_shapes",
    "load_coco_json_checked",
    "read_json",
    "register_builtin_datasets",
    "register_custom_coco",
    "train_mapper_class",
]

register_builtin_datasets()
