"""The one way iuq_d2's entry points turn a config file and overrides into a config."""

import logging
from typing import Optional, Sequence

import torch
from detectron2.config import CfgNode, get_cfg

from ..config import (
    add_condinst_config,
    add_iuq_config,
    check_adelaidet_only_keys,
    removed_key_error,
)
from ..data import check_num_classes, choose_mask_format, register_custom_coco

logger = logging.getLogger(__name__)


def get_config() -> CfgNode:
    """detectron2's defaults plus every key iuq_d2 reads; nothing merged, nothing checked."""
    cfg = get_cfg()
    add_condinst_config(cfg)
    add_iuq_config(cfg)
    return cfg


def merge_config(config_file: Optional[str], opts: Sequence[str] = ()) -> CfgNode:
    """:func:`get_config` with ``config_file`` and then ``opts`` (``KEY VALUE ...``) merged, a
    removed key refused by name; nothing checked, no dataset read."""
    cfg = get_config()
    for source, merge in (
        (config_file, lambda: cfg.merge_from_file(config_file)),
        ("the command-line overrides", lambda: cfg.merge_from_list(list(opts))),
    ):
        if not source:
            continue
        try:
            merge()
        except (KeyError, AssertionError) as e:  # YACS: file keys, override keys
            error = removed_key_error(e, source)
            if error is None:
                raise
            raise error from None
    return cfg


def load_config(
    config_file: Optional[str], opts: Sequence[str] = (), freeze: bool = True
) -> CfgNode:
    """:func:`merge_config`, then what every run needs before a model or loader is built.

    So that training, evaluation, the demo and the benchmarks agree: a CUDA config falls back to
    the CPU on a machine without CUDA (configs name ``cuda`` and tests, demos and CI run on
    CPUs), AMP on the CPU is refused, so are AdelaiDet keys set to a feature iuq_d2 lacks
    (``check_adelaidet_only_keys``), DATASETS.CUSTOM_COCO is registered and
    MODEL.FCOS.NUM_CLASSES is checked against the datasets, so that a mismatch fails here rather
    than mid-training, and INPUT.MASK_FORMAT becomes "bitmask" where a training dataset has RLE
    masks (``choose_mask_format``).
    """
    cfg = merge_config(config_file, opts)
    if torch.device(cfg.MODEL.DEVICE).type == "cuda" and not torch.cuda.is_available():
        logger.warning(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but CUDA is not available: using cpu")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
        raise ValueError("SOLVER.AMP.ENABLED True needs a CUDA device; this run is on the CPU")
    check_adelaidet_only_keys(cfg)
    register_custom_coco(cfg)
    check_num_classes(cfg)
    choose_mask_format(cfg)
    if freeze:
        cfg.freeze()
    return cfg
