"""Evaluations beyond COCO AP: what the IUQ mechanism does to the model (see ``mechanism``)."""

from .mechanism import (
    BANK_PREFIXES,
    EncodedImage,
    FiringStats,
    IdentityStats,
    SharpnessStats,
    bank_ages,
    bank_feature_drift,
    coco_mask_ap,
    confident,
    encode_image,
    false_firing,
    feature_identity,
    map_for_evaluation,
    mask_sharpness,
    read_bank,
    sample_bank_entries,
)

__all__ = [
    "BANK_PREFIXES",
    "EncodedImage",
    "FiringStats",
    "IdentityStats",
    "SharpnessStats",
    "bank_ages",
    "bank_feature_drift",
    "coco_mask_ap",
    "confident",
    "encode_image",
    "false_firing",
    "feature_identity",
    "map_for_evaluation",
    "mask_sharpness",
    "read_bank",
    "sample_bank_entries",
]
