"""mmdetection for the parity test, imported from the folder ``make install`` fills.

The folder (``.mmdet-stack/``: mmdet 3.3.0, mmengine, mmcv-lite and their pure-Python needs) is
put on the path by the test alone, after the environment's own packages, so that our torch,
numpy and opencv are the ones used. mmcv-lite has no compiled ops, and importing mmdet's models
imports ``mmcv.ops``, which loads ``mmcv._ext``: a stand-in provides the one op CondInst's
inference runs (NMS, through torchvision) and raises for every other.
"""

import os
import sys
import types

import pytest
import torch
import torchvision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK = os.path.join(REPO, ".mmdet-stack")
CONDINST_CONFIG = "condinst/condinst_r50_fpn_ms-poly-90k_coco_instance.py"


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int):
    """mmcv's ``ext_module.nms``: kept indices by decreasing score."""
    if offset != 0:
        raise NotImplementedError("the mmcv._ext stand-in has NMS with offset 0 only")
    return torchvision.ops.nms(boxes, scores, iou_threshold)


def _missing_op(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(f"mmcv._ext.{name}: compiled op not in the test's stand-in")

    return op


def _ext_attribute(name: str):
    # mmcv's ext_loader checks that every op it lists exists; each is a stub that raises.
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing_op(name)


def _install_ext_stand_in() -> None:
    ext = types.ModuleType("mmcv._ext")
    ext.nms = _nms
    ext.__getattr__ = _ext_attribute
    sys.modules["mmcv._ext"] = ext


def import_mmdet() -> types.ModuleType:
    """mmdet with its CondInst registered; skips the test where the folder is absent, fails
    instead with IUQ_REQUIRE_MMDET=1 (CI, where a skip would pass unseen)."""
    if not os.path.isdir(os.path.join(STACK, "mmdet")):
        reason = f"mmdetection stack not installed in {STACK} (make mmdet-stack; make test does it)"
        if os.environ.get("IUQ_REQUIRE_MMDET") == "1":
            pytest.fail(reason + " (IUQ_REQUIRE_MMDET=1)", pytrace=False)
        pytest.skip(reason)
    if STACK not in sys.path:
        sys.path.append(STACK)
    _install_ext_stand_in()
    import mmdet
    import mmdet.models  # noqa: F401  (registers CondInst and its heads)
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    return mmdet


def build_mmdet_condinst() -> torch.nn.Module:
    """mmdetection's R-50 CondInst from the config shipped in its wheel, in eval mode, with no
    pretrained weights to fetch."""
    mmdet = import_mmdet()
    from mmdet.registry import MODELS
    from mmengine.config import Config

    configs = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    cfg = Config.fromfile(os.path.join(configs, CONDINST_CONFIG))
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model).eval()
