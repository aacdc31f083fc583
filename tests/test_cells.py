"""Tests of the synthetic cells generator: determinism, exact masks and polygons, the promised
crowding (counts, touching instances, look-alike colours) and COCO loading by detectron2."""

import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from iuq_d2.data.cells import CELLS_CLASSES, NUM_OBJECTS, generate_cells, render_image
from iuq_d2.data.shapes import mask_to_polygons

NUM_RENDERED = 24


@pytest.fixture(scope="module")
def rendered():
    """(image, objects) of the first NUM_RENDERED images of seed 3."""
    return [render_image(3, index) for index in range(NUM_RENDERED)]


def decode(segmentation, height, width):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(segmentation, height, width)))


def test_generator_is_deterministic(tmp_path):
    paths = [generate_cells(str(tmp_path / d), 4, s) for d, s in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = (open(p, "rb").read() for p in paths)
    assert a == b and a != c
    names = sorted(os.listdir(tmp_path / "a" / "images"))
    assert len(names) == 4
    for name in names:
        data = [open(tmp_path / d / "images" / name, "rb").read() for d in ("a", "b", "c")]
        assert data[0] == data[1] and data[0] != data[2]


def test_masks_are_disjoint_and_polygons_exact(rendered):
    for image, objects in rendered:
        assert image.dtype == np.uint8 and all(128 <= v <= 192 for v in image.shape[:2])
        covered = np.zeros(image.shape[:2], np.int32)
        for _, mask in objects:
            covered += mask
            polygons = mask_to_polygons(mask)
            assert len(polygons) == 1 and len(polygons[0]) >= 6
            assert (decode(polygons, *mask.shape).astype(bool) == mask).all()
        assert covered.max() == 1


def test_crowded_look_alike_instances(rendered):
    counts = [len(objects) for _, objects in rendered]
    assert NUM_OBJECTS[0] <= min(counts) and max(counts) <= NUM_OBJECTS[1]
    assert 25 <= np.mean(counts) <= 35
    classes = [c for _, objects in rendered for c, _ in objects]
    assert set(classes) == set(range(len(CELLS_CLASSES)))
    diameters = [np.sqrt(4 * m.sum() / np.pi) for _, objects in rendered for _, m in objects]
    assert 10 <= np.percentile(diameters, 5) and np.percentile(diameters, 95) <= 28

    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    num_touching = 0
    for image, objects in rendered:
        masks = [m for _, m in objects]
        grown = [cv2.dilate(m.astype(np.uint8), cross).astype(bool) for m in masks]
        num_touching += sum((g & m).any() for i, g in enumerate(grown) for m in masks[i + 1 :])
        # Neighbours look alike: object colours vary much less than they differ from the ground.
        means = np.array([image[m].mean(axis=0) for m in masks])
        background = image[~np.any(masks, axis=0)].mean(axis=0)
        spread = np.abs(means - means.mean(axis=0)).sum(axis=1).max()
        assert spread < 0.5 * np.abs(background - means.mean(axis=0)).sum()
    assert num_touching >= 5 * NUM_RENDERED


def test_coco_json_loads_in_detectron2(tmp_path):
    json_file = generate_cells(str(tmp_path), 3, 7)
    with open(json_file) as f:
        data = json.load(f)
    assert [c["name"] for c in data["categories"]] == list(CELLS_CLASSES)
    for ann in data["annotations"]:
        image = data["images"][ann["image_id"] - 1]
        mask = decode(ann["segmentation"], image["height"], image["width"])
        ys, xs = np.nonzero(mask)
        tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["bbox"] == tight and ann["area"] == mask.sum() and ann["iscrowd"] == 0

    dicts = load_coco_json(json_file, str(tmp_path / "images"), "cells_test_tmp")
    assert len(dicts) == 3
    assert sum(len(d["annotations"]) for d in dicts) == len(data["annotations"])
    for d in dicts:
        assert os.path.isfile(d["file_name"])
        assert cv2.imread(d["file_name"]).shape == (d["height"], d["width"], 3)
        for ann in d["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS and ann["category_id"] in (0, 1)
