"""Shared fixtures: small configs and hand-made inputs for CondInst."""

import os

import pytest
import torch
from detectron2.structures import Boxes, Instances, PolygonMasks

from iuq_d2.engine.config_loader import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "Demo", "shapes_CondInst.yaml")


def set_keys(cfg, overrides):
    """Set dotted config keys, e.g. {"MODEL.FCOS.NUM_CLASSES": 3}; returns cfg."""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def tiny_config(**overrides):
    """The demo config shrunk further, for model tests that need a fast forward/backward."""
    cfg = load_config(DEMO_CONFIG, freeze=False)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.CONDINST.MASK_BRANCH.CHANNELS = 16
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 1
    cfg.MODEL.FCOS.NUM_BOX_CONVS = 1
    cfg.MODEL.FCOS.NORM = "GN"
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    return set_keys(cfg, overrides)


def square_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def make_input(height, width, boxes, classes, seed=0):
    """A dataset-mapper-like dict with rectangular instances (mask = box)."""
    g = torch.Generator().manual_seed(seed)
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    inst.gt_masks = PolygonMasks([square_polygon(*b) for b in boxes])
    image = torch.randint(0, 256, (3, height, width), generator=g).float()
    return {"image": image, "instances": inst, "height": height, "width": width, "image_id": seed}


def spread_weights(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a CondInst) with its heads' random weights spread: at its own initialisation
    FCOS predicts sub-pixel boxes with near-equal scores and the controller masks of
    probability ~0.5, which would leave NMS, thresholds and the masks' content untested."""
    head = model.proposal_generator.fcos_head
    torch.nn.init.normal_(head.cls_logits.weight, std=0.05)
    torch.nn.init.normal_(head.bbox_pred.weight, std=0.05)
    torch.nn.init.constant_(head.bbox_pred.bias, 1.0)
    torch.nn.init.normal_(model.controller.weight, std=0.1)
    return model


@pytest.fixture
def tiny_cfg():
    return tiny_config()
