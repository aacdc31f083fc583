"""Shared fixtures: small configs and hand-made inputs for CondInst; time limits for the
multi-process tests; skips of missing Triton or CUDA that a variable turns into failures."""

import multiprocessing
import os

import pytest
import torch
from detectron2.structures import Boxes, Instances, PolygonMasks

from iuq_d2.engine.config_loader import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "Demo", "shapes_CondInst.yaml")

# A multi-process test that deadlocks fails after this many seconds instead of hanging the suite
# (pytest-timeout; pytest.ini's `timeout` bounds every other test). They take under a minute.
MULTIPROCESS_TIMEOUT_S = 300
multiprocess = pytest.mark.timeout(MULTIPROCESS_TIMEOUT_S)
# Their process groups' timeout: a rank that waits longer for a dead or stuck peer raises.
DIST_TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def _end_leftover_processes():
    """Kill the multiprocessing children that a test started and left running (a rank stuck
    in a collective when the test timed out): Python's exit would wait for them forever."""
    before = set(multiprocessing.active_children())
    yield
    for child in multiprocessing.active_children():
        if child not in before:
            child.kill()
            child.join(10)


def require_or_skip(available: bool, reason: str, variable: str) -> None:
    """Skip the test (or module) for ``reason`` unless ``available``; where ``variable`` is "1"
    (IUQ_REQUIRE_TRITON in CI, IUQ_REQUIRE_CUDA on a GPU machine), fail instead: there the skip
    would hide a broken install behind a passing run."""
    if available:
        return
    if os.environ.get(variable) == "1":
        pytest.fail(f"{reason} ({variable}=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_triton():
    """The ``triton`` module, as ``pytest.importorskip("triton")`` gives it, but a failure
    under IUQ_REQUIRE_TRITON=1."""
    try:
        import triton
    except ImportError as e:
        require_or_skip(False, f"triton does not import: {e}", "IUQ_REQUIRE_TRITON")
    return triton


def require_cuda() -> None:
    """Skip without a CUDA device; fail under IUQ_REQUIRE_CUDA=1 (benchmarks/gpu.sh)."""
    require_or_skip(torch.cuda.is_available(), "needs a CUDA device", "IUQ_REQUIRE_CUDA")


@pytest.fixture
def _cuda() -> None:
    require_cuda()


def requires_cuda(test):
    """For a test or class: a skip without CUDA that IUQ_REQUIRE_CUDA=1 turns into a failure,
    and the ``cuda`` marker by which benchmarks/gpu.sh selects every CUDA test."""
    return pytest.mark.cuda(pytest.mark.usefixtures("_cuda")(test))


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
