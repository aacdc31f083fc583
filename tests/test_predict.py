"""iuq_d2.predict and iuq_d2.visualize with a randomly initialised demo model on generated shapes:
the results json is what pycocotools takes, and the pictures are large, GT beside prediction."""

import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from iuq_d2.data import ensure_shapes, load_coco_json_checked
from iuq_d2.engine import CheckpointMismatchError
from iuq_d2.engine.config_loader import load_config
from iuq_d2.predict import RESULTS_FILE, dataset_category_ids, list_images
from iuq_d2.predict import main as predict_main
from iuq_d2.visualize import (
    GAP,
    HEADER_HEIGHT,
    MIN_SHORT_SIDE,
    build_predictor,
    upscale_factor,
    visualize,
)

from .conftest import DEMO_CONFIG, spread_weights

# A random model scores every candidate low: keep all of them, so that there is something to
# check; 20 detections an image (after NMS) are enough, and quick to draw.
KEEP_ALL = ["MODEL.FCOS.INFERENCE_TH_TEST", "0.0", "MODEL.FCOS.POST_NMS_TOPK_TEST", "20"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """3 generated shapes images: (annotations.json, image folder)."""
    root = tmp_path_factory.mktemp("predict_shapes")
    json_file = ensure_shapes(str(root / "shapes"), 3, 1)
    return json_file, str(root / "shapes" / "images")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A checkpoint of the demo model, randomly initialised and spread (``spread_weights``)."""
    root = tmp_path_factory.mktemp("random_model")
    torch.manual_seed(0)
    model = spread_weights(build_model(load_config(DEMO_CONFIG)))
    DetectionCheckpointer(model, save_dir=str(root)).save("random")
    return str(root / "random.pth")


def model_detections(weights: str, images: str):
    """{file name: the predictor's Instances}, for the images of a folder."""
    predictor = build_predictor(DEMO_CONFIG, weights, KEEP_ALL)
    return {
        name: predictor(read_image(os.path.join(images, name), format="BGR"))["instances"]
        for name in sorted(os.listdir(images))
    }


def as_coco(instances, category_ids):
    """The test's own reading of Instances as COCO results: (category, xywh box, score, mask)."""
    boxes = instances.pred_boxes.tensor.numpy().astype(np.float64)
    boxes[:, 2:] -= boxes[:, :2]
    return [
        (category_ids[int(c)], box, float(score), mask.numpy())
        for c, box, score, mask in zip(
            instances.pred_classes, boxes, instances.scores, instances.pred_masks
        )
    ]


def _predict(tmp_path, weights, inputs, threshold):
    argv = ["--config-file", DEMO_CONFIG, "--weights", weights, "--input", inputs]
    argv += ["--output", str(tmp_path), "--score-thresh", str(threshold), *KEEP_ALL]
    path = predict_main(argv)
    assert path == os.path.join(tmp_path, RESULTS_FILE)
    with open(path) as f:
        return json.load(f)


def test_predict_writes_the_models_detections_and_a_picture_per_image(
    tmp_path, shapes, random_weights
):
    json_file, images = shapes
    results = _predict(tmp_path, random_weights, images, 0)
    gt = COCO(json_file)
    category_ids = sorted(gt.getCatIds())
    expected = {
        name: as_coco(instances, category_ids)
        for name, instances in model_detections(random_weights, images).items()
    }
    assert all(expected.values())
    names = sorted(expected)
    written = {name: [r for r in results if r["file_name"] == name] for name in names}
    assert sum(map(len, written.values())) == len(results)
    for name in names:
        assert len(written[name]) == len(expected[name]), name
        for r, (category, box, score, mask) in zip(written[name], expected[name]):
            assert r["category_id"] == category
            np.testing.assert_allclose(r["bbox"], box, rtol=0, atol=1e-3)
            assert r["score"] == pytest.approx(score, abs=1e-6)
            assert isinstance(r["segmentation"]["counts"], str)
            np.testing.assert_array_equal(mask_util.decode(r["segmentation"]), mask)

    # pycocotools reads the json back as these detections: scored against them as ground truth
    # (the test's own encoding), each one is matched at every IoU threshold (AP 1). An empty
    # mask matches nothing, not even itself: those are left out.
    ids = {image["file_name"]: image["id"] for image in gt.dataset["images"]}
    truth = [
        (ids[name], category, box, mask)
        for name in names
        for category, box, _, mask in expected[name]
        if mask.any()
    ]
    assert len(truth) > len(results) // 2
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": gt.dataset["images"],
        "categories": gt.dataset["categories"],
        "annotations": [
            {
                "id": index,
                "image_id": image_id,
                "category_id": category,
                "bbox": box.tolist(),
                "area": float(mask.sum()),
                "segmentation": mask_util.encode(np.asfortranarray(mask.astype(np.uint8))),
                "iscrowd": 0,
            }
            for index, (image_id, category, box, mask) in enumerate(truth, 1)
        ],
    }
    ground_truth.createIndex()
    results = [r for r in results if mask_util.area(r["segmentation"]) > 0]
    for r in results:
        r["image_id"] = ids[r.pop("file_name")]
    detections = ground_truth.loadRes(results)
    for iou_type in ("bbox", "segm"):
        evaluation = COCOeval(ground_truth, detections, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0), iou_type

    pictures = sorted(os.listdir(tmp_path / "vis"))
    assert pictures == [os.path.splitext(n)[0] + ".png" for n in names]
    for name in names:
        source = cv2.imread(os.path.join(images, name))
        picture = cv2.imread(str(tmp_path / "vis" / (os.path.splitext(name)[0] + ".png")))
        scale = upscale_factor(*source.shape[:2])
        assert picture.shape == (
            source.shape[0] * scale + HEADER_HEIGHT,
            source.shape[1] * scale,
            3,
        )


def test_predict_score_threshold_drops_low_scores(tmp_path, shapes, random_weights):
    """At the median of the model's scores, the upper half is written and nothing else."""
    name = "000000.png"
    instances = model_detections(random_weights, shapes[1])[name]
    scores = sorted(instances.scores.tolist())
    threshold = scores[len(scores) // 2]
    kept = [s for s in scores if s >= threshold]
    assert 0 < len(kept) < len(scores)
    results = _predict(tmp_path, random_weights, os.path.join(shapes[1], name), threshold)
    assert sorted(r["score"] for r in results) == pytest.approx(kept, abs=1e-6)
    assert os.listdir(tmp_path / "vis") == [name]


def test_predict_refuses_a_checkpoint_without_some_weights(tmp_path, shapes, random_weights):
    """Nothing is predicted with a random controller."""
    model = torch.load(random_weights, weights_only=False)["model"]
    weights = str(tmp_path / "no_controller.pth")
    torch.save({"model": {k: v for k, v in model.items() if "controller" not in k}}, weights)
    missing = r"2 of the model's \d+ keys are missing: controller.bias, controller.weight"
    with pytest.raises(CheckpointMismatchError, match=missing):
        _predict(tmp_path / "out", weights, shapes[1], 0)
    assert not (tmp_path / "out").exists()


def test_visualize_draws_ground_truth_beside_prediction_at_least_480_px(
    tmp_path, shapes, random_weights
):
    json_file, images = shapes
    records = load_coco_json_checked(json_file, images, "test_predict_shapes")
    predictor = build_predictor(DEMO_CONFIG, random_weights, KEEP_ALL)
    (path,) = visualize(predictor, records[:1], str(tmp_path), "test_predict_shapes", 0.0)
    picture = cv2.imread(path)
    source = cv2.imread(records[0]["file_name"])
    scale = upscale_factor(*source.shape[:2])
    panel_height, panel_width = source.shape[0] * scale, source.shape[1] * scale
    assert min(panel_height, panel_width) >= MIN_SHORT_SIDE
    assert picture.shape == (panel_height + HEADER_HEIGHT, 2 * panel_width + GAP, 3)
    truth, prediction = picture[:, :panel_width], picture[:, panel_width + GAP :]
    assert not np.array_equal(truth, prediction)
    plain = cv2.resize(source, (panel_width, panel_height), interpolation=cv2.INTER_LINEAR)
    assert not np.array_equal(truth[HEADER_HEIGHT:], plain)  # the image has 2 objects


def test_upscale_factor_reaches_the_short_side_with_an_integer():
    assert upscale_factor(160, 200) == 3
    assert upscale_factor(128, 192) == 4
    assert upscale_factor(600, 800) == 1


def test_dataset_category_ids(tmp_path):
    """The metadata's map, else the ids of its json (as the load would map them), else 1, 2, ..."""
    id_map = {7: 1, 3: 0}
    assert dataset_category_ids(Metadata(thing_dataset_id_to_contiguous_id=id_map), 2) == [3, 7]
    json_file = tmp_path / "annotations.json"
    categories = [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}]
    json_file.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    assert dataset_category_ids(Metadata(json_file=str(json_file)), 2) == [2, 5]
    assert dataset_category_ids(Metadata(json_file=str(tmp_path / "not_yet.json")), 2) == [1, 2]
    assert dataset_category_ids(None, 3) == [1, 2, 3]


def test_list_images_refuses_two_images_of_one_picture_name(tmp_path, shapes):
    images = shapes[1]
    (tmp_path / "000000.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    assert list_images([images]) == [os.path.join(images, n) for n in sorted(os.listdir(images))]
    assert list_images([str(tmp_path)]) == [str(tmp_path / "000000.jpg")]
    with pytest.raises(ValueError, match="two images would be drawn to 000000.png"):
        list_images([images, str(tmp_path)])
    with pytest.raises(FileNotFoundError):
        list_images([str(tmp_path / "missing")])
