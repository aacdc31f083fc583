"""iuq_d2.export: the ONNX graph (run by onnxruntime) and the TorchScript module give the PyTorch
model's detections on shapes images of several sizes, including none, and the command line
exports an IUQ-CondInst checkpoint."""

import copy
import json
import os

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from detectron2.modeling import build_model

from iuq_d2.data import ensure_shapes
from iuq_d2.engine import CheckpointMismatchError
from iuq_d2.engine.config_loader import load_config
from iuq_d2.export import example_image, export_onnx, export_torchscript
from iuq_d2.export.__main__ import main as export_main

from .conftest import DEMO_CONFIG, REPO, spread_weights

# Random weights, every location a candidate (pre-NMS top-k cut taken at P3), post-NMS cut taken.
OPTS = ["MODEL.FCOS.INFERENCE_TH_TEST", "0.0", "MODEL.FCOS.POST_NMS_TOPK_TEST", "20"]
BOX_ATOL = 1e-3  # pixels; measured <= 1e-4 for onnxruntime, 0 for TorchScript
SCORE_ATOL = 1e-5  # measured <= 4e-7
MIN_PIXEL_AGREEMENT = 0.999  # per mask; measured >= 0.99999
MIN_MASK_IOU = 0.99  # per mask of >= 100 pixels, whose IoU one flipped border pixel cannot sink


def random_model(opts=OPTS, config=DEMO_CONFIG):
    """The demo model, randomly initialised and spread (``spread_weights``), so that NMS, the
    top-k cuts and the mask threshold are exercised."""
    torch.manual_seed(0)
    cfg = load_config(config, opts)
    return cfg, spread_weights(build_model(cfg).eval())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four shapes images (BGR, [3, H, W] float), each of another size."""
    out_dir = str(tmp_path_factory.mktemp("shapes"))
    with open(ensure_shapes(out_dir, 4, 1)) as f:
        files = [os.path.join(out_dir, "images", i["file_name"]) for i in json.load(f)["images"]]
    tensors = [torch.as_tensor(cv2.imread(f)).permute(2, 0, 1).float() for f in files]
    assert len({t.shape for t in tensors}) == len(tensors)
    return tensors


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The random model, and a runner of each export of it: image [3, H, W] -> numpy outputs."""
    cfg, model = random_model()
    folder = tmp_path_factory.mktemp("export")
    onnx_path, ts_path = str(folder / "model.onnx"), str(folder / "model.ts")
    export_onnx(model, example_image(cfg), onnx_path)
    export_torchscript(model, example_image(cfg), ts_path)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    traced = torch.jit.load(ts_path)
    runners = {
        "onnx": lambda image: session.run(None, {"image": image.numpy()}),
        "torchscript": lambda image: run_torchscript(traced, image),
    }
    return model, runners


def run_torchscript(traced, image):
    with torch.no_grad():
        return [x.numpy() for x in traced(image)]


def pytorch_outputs(model, image):
    """boxes, scores, classes, masks of the model's detectron2 inference path."""
    with torch.no_grad():
        inst = model([{"image": image}])[0]["instances"]
    return [
        x.numpy() for x in (inst.pred_boxes.tensor, inst.scores, inst.pred_classes, inst.pred_masks)
    ]


def assert_same_detections(expected, actual):
    boxes, scores, classes, masks = expected
    assert [x.shape for x in actual] == [x.shape for x in expected]
    assert [x.dtype for x in actual] == [np.float32, np.float32, np.int64, np.bool_]
    np.testing.assert_allclose(actual[0], boxes, rtol=0, atol=BOX_ATOL)
    np.testing.assert_allclose(actual[1], scores, rtol=0, atol=SCORE_ATOL)
    np.testing.assert_array_equal(actual[2], classes)
    agreement = (actual[3] == masks).mean(axis=(1, 2))
    assert agreement.min(initial=1.0) >= MIN_PIXEL_AGREEMENT
    union = (actual[3] | masks).sum(axis=(1, 2))
    iou = (actual[3] & masks).sum(axis=(1, 2)) / np.maximum(union, 1)
    assert iou[union >= 100].min(initial=1.0) >= MIN_MASK_IOU


@pytest.fixture(scope="module")
def expected(exported, images):
    """The PyTorch model's outputs on each image, shared by the formats."""
    return [pytorch_outputs(exported[0], image) for image in images]


def test_images_exercise_the_graph(expected):
    """Detections on every image, and the post-NMS cut taken on some."""
    counts = [len(scores) for _, scores, _, _ in expected]
    assert min(counts) > 0 and max(counts) == 20


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(exported, images, expected, fmt):
    run = exported[1][fmt]
    for image, outputs in zip(images, expected):
        actual = run(image)
        assert actual[3].shape[1:] == image.shape[1:]
        assert_same_detections(outputs, actual)


def test_export_without_detections(exported, images, tmp_path):
    model = copy.deepcopy(exported[0])
    model.proposal_generator.score_thresh = 1.0
    image = images[0]
    export_onnx(model, image, str(tmp_path / "model.onnx"))
    export_torchscript(model, image, str(tmp_path / "model.ts"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    h, w = image.shape[1:]
    for outputs in (session.run(None, {"image": image.numpy()}), run_torchscript(traced, image)):
        assert [tuple(x.shape) for x in outputs] == [(0, 4), (0,), (0,), (0, h, w)]


def test_cli_exports_iuq_checkpoint(images, tmp_path):
    """An IUQ-CondInst checkpoint (query bank included) exported with the plain CondInst config
    gives the IUQ model's detections."""
    iuq_config = os.path.join(REPO, "configs", "Demo", "shapes_IUQ.yaml")
    _, model = random_model(config=iuq_config)
    assert any(k.startswith("inter_scene.") for k in model.state_dict())
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": model.state_dict()}, weights)
    out_dir = str(tmp_path / "export")
    args = ["--config-file", DEMO_CONFIG, "--weights", weights, "--format", "torchscript"]
    path = export_main([*args, "--output", out_dir, *OPTS])
    traced = torch.jit.load(path)
    image = images[1]
    assert_same_detections(pytorch_outputs(model, image), run_torchscript(traced, image))
    with open(os.path.join(out_dir, "export.json")) as f:
        info = json.load(f)
    assert info["input"]["format"] == "BGR"
    assert info["max_detections"] == 20
    assert info["thing_classes"] is not None and len(info["thing_classes"]) == 4


def test_cli_refuses_a_checkpoint_without_some_weights(tmp_path):
    """A checkpoint without the controller would export random dynamic filters."""
    _, model = random_model()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("controller.")}
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": state}, weights)
    out_dir = tmp_path / "export"
    args = ["--config-file", DEMO_CONFIG, "--weights", weights, "--output", str(out_dir)]
    missing = r"2 of the model's \d+ keys are missing: controller.bias, controller.weight"
    with pytest.raises(CheckpointMismatchError, match=missing):
        export_main([*args, *OPTS])
    assert not out_dir.exists()
