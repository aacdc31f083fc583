"""iuq_d2.predict and iuq_d2.visualize with a randomly initialised demo model on generated shapes:
the results json is what pycocotools takes, and the pictures are large, GT beside prediction."""

import json
import os

import cv2
import numpy as np
import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import Metadata
from detectron2.modeling import build_model
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from iuq_d2.data import ensure_shapes, load_coco_json_checked
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

from .conftest import DEMO_CONFIG

# A random model scores every candidate low: keep all of them, so that there is something to check.
KEEP_ALL = ["MODEL.FCOS.INFERENCE_TH_TEST", "0.0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """3 generated shapes images: (annotations.json, image folder)."""
    root = tmp_path_factory.mktemp("predict_shapes")
    json_file = ensure_shapes(str(root / "shapes"), 3, 1)
    return json_file, str(root / "shapes" / "images")


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A checkpoint of the demo model as initialised (MODEL.WEIGHTS "")."""
    root = tmp_path_factory.mktemp("random_model")
    model = build_model(load_config(DEMO_CONFIG))
    DetectionCheckpointer(model, save_dir=str(root)).save("random")
    return str(root / "random.pth")


def test_predict_writes_coco_results_and_a_picture_per_image(tmp_path, shapes, random_weights):
    json_file, images = shapes
    out = predict_main(
        [
            "--config-file",
            DEMO_CONFIG,
            "--weights",
            random_weights,
            "--input",
            images,
            "--output",
            str(tmp_path),
            "--score-thresh",
            "0",
            *KEEP_ALL,
        ]
    )
    assert out == str(tmp_path / RESULTS_FILE)
    with open(out) as f:
        results = json.load(f)
    assert results
    names = sorted(os.listdir(images))
    assert {r["file_name"] for r in results} <= set(names)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)

    gt = COCO(json_file)
    ids = {image["file_name"]: image["id"] for image in gt.dataset["images"]}
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    for r in results:
        r["image_id"] = ids[r.pop("file_name")]
    detections = gt.loadRes(results)
    for iou_type in ("bbox", "segm"):
        evaluation = COCOeval(gt, detections, iou_type)
        evaluation.evaluate()
        evaluation.accumulate()

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
    out = predict_main(
        [
            "--config-file",
            DEMO_CONFIG,
            "--weights",
            random_weights,
            "--input",
            os.path.join(shapes[1], "000000.png"),
            "--output",
            str(tmp_path),
            "--score-thresh",
            "0.99",
            *KEEP_ALL,
        ]
    )
    with open(out) as f:
        assert json.load(f) == []
    assert os.listdir(tmp_path / "vis") == ["000000.png"]


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
