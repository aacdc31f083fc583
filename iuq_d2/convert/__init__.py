"""Checkpoints of other code bases, converted to iuq_d2's parameter names."""

from .mmdetection import (
    convert_mmdet_condinst,
    mmdet_condinst_key_pairs,
    read_mmdet_state_dict,
    resnet_key_pairs,
)

__all__ = [
    "convert_mmdet_condinst",
    "mmdet_condinst_key_pairs",
    "read_mmdet_state_dict",
    "resnet_key_pairs",
]
