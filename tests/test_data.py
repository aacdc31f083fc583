"""Tests of iuq_d2.data: the shapes generator, dataset registration, checked COCO loading and the
mapper. Datasets are generated into tmp_path with few images, so the suite stays fast."""

import copy
import json
import logging
import multiprocessing
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances

from iuq_d2.config import add_condinst_config, add_iuq_config
from iuq_d2.data import (
    SHAPES_CLASSES,
    CondInstDatasetMapper,
    IUQDatasetMapper,
    check_mapper_views,
    check_num_classes,
    ensure_shapes,
    generate_shapes,
    load_coco_json_checked,
    register_builtin_datasets,
    register_custom_coco,
    train_mapper_class,
)
from iuq_d2.data.shapes import SHAPES_SPLITS, mask_to_polygons, render_image
from iuq_d2.engine.trainer import Trainer

from .conftest import REPO, multiprocess, set_keys


@pytest.fixture(scope="module")
def shapes60(tmp_path_factory):
    """60 images of seed 0, and their json content."""
    out_dir = str(tmp_path_factory.mktemp("shapes60"))
    json_file = generate_shapes(out_dir, 60, 0)
    with open(json_file) as f:
        return out_dir, json.load(f)


@pytest.fixture
def small_builtin(tmp_path):
    """The builtin shapes datasets with 6 images per split, cached in tmp_path."""
    saved = dict(SHAPES_SPLITS)
    SHAPES_SPLITS.update(train=(6, 0), val=(6, 1))
    register_builtin_datasets(str(tmp_path))
    yield tmp_path
    SHAPES_SPLITS.update(saved)
    register_builtin_datasets()


def make_cfg(**overrides):
    cfg = get_cfg()
    add_condinst_config(cfg)
    return set_keys(cfg, overrides)


def decode(segmentation, height, width):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(segmentation, height, width)))


def test_generator_is_deterministic(tmp_path):
    paths = [generate_shapes(str(tmp_path / d), 8, s) for d, s in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = (open(p, "rb").read() for p in paths)
    assert a == b and a != c
    names = sorted(os.listdir(tmp_path / "a" / "images"))
    assert len(names) == 8
    for name in names:
        data = [open(tmp_path / d / "images" / name, "rb").read() for d in ("a", "b", "c")]
        assert data[0] == data[1] and data[0] != data[2]


def test_generator_content(shapes60):
    out_dir, data = shapes60
    images = {image["id"]: image for image in data["images"]}
    anns = data["annotations"]
    assert [c["name"] for c in data["categories"]] == list(SHAPES_CLASSES)
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4}
    sides = np.array([max(a["bbox"][2:]) for a in anns])
    assert (sides <= 16).sum() > 20 and ((sides > 16) & (sides <= 48)).sum() > 20
    assert (sides >= 56).sum() > 10
    sizes = {(i["width"], i["height"]) for i in images.values()}
    assert len(sizes) > 20 and any(w != h for w, h in sizes)
    assert all(128 <= v <= 192 for size in sizes for v in size)
    assert len(images) - len({a["image_id"] for a in anns}) == 3
    assert sum(len(a["segmentation"]) > 1 for a in anns) >= 2

    num_overlaps = 0
    for image_id, image in images.items():
        h, w = image["height"], image["width"]
        masks = []
        for a in (a for a in anns if a["image_id"] == image_id):
            assert a["iscrowd"] == 0
            mask = decode(a["segmentation"], h, w).astype(bool)
            ys, xs = np.nonzero(mask)
            tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["bbox"] == tight and a["area"] == mask.sum()
            masks.append((mask, a["bbox"]))
        for i, (mask, box) in enumerate(masks):
            for other, other_box in masks[i + 1 :]:
                assert not (mask & other).any()
                x0, y0 = max(box[0], other_box[0]), max(box[1], other_box[1])
                x1 = min(box[0] + box[2], other_box[0] + other_box[2])
                y1 = min(box[1] + box[3], other_box[1] + other_box[3])
                num_overlaps += x1 > x0 and y1 > y0
    assert num_overlaps > 30
    image = cv2.imread(os.path.join(out_dir, "images", data["images"][0]["file_name"]))
    assert image.shape == (images[1]["height"], images[1]["width"], 3)


def test_polygons_reproduce_visible_masks():
    num_objects = 0
    for index in range(12):
        image, objects = render_image(5, index)
        for _, mask in objects:
            polygons = mask_to_polygons(mask)
            assert all(len(p) >= 6 for p in polygons)
            assert (decode(polygons, *mask.shape).astype(bool) == mask).all()
            num_objects += 1
    assert num_objects > 20


def _generate(out_dir, barrier):
    barrier.wait(60)
    ensure_shapes(out_dir, 12, 2)


@multiprocess
def test_concurrent_generation(tmp_path):
    out_dir = str(tmp_path / "cache" / "shapes")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_generate, args=(out_dir, barrier)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    assert os.listdir(tmp_path / "cache") == ["shapes"]
    reference = generate_shapes(str(tmp_path / "reference"), 12, 2)
    assert (
        open(reference, "rb").read() == open(os.path.join(out_dir, "annotations.json"), "rb").read()
    )
    assert len(os.listdir(os.path.join(out_dir, "images"))) == 12
    assert ensure_shapes(out_dir, 12, 2) == os.path.join(out_dir, "annotations.json")


def test_builtin_datasets_are_lazy_and_evaluate(small_builtin, tmp_path):
    meta = MetadataCatalog.get("shapes_val")
    assert meta.thing_classes == list(SHAPES_CLASSES) and meta.evaluator_type == "coco"
    assert meta.json_file.startswith(str(small_builtin))
    assert not os.path.exists(meta.json_file)
    dicts = DatasetCatalog.get("shapes_val")
    assert len(dicts) == 6 and os.path.isfile(meta.json_file)
    assert len(DatasetCatalog.get("shapes_train")) == 6

    # The images' own masks, given as predictions, must score AP 100 against the polygons.
    evaluator = COCOEvaluator("shapes_val", output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    for d in dicts:
        _, objects = render_image(1, d["image_id"] - 1)
        pred = Instances((d["height"], d["width"]))
        pred.pred_masks = torch.as_tensor(np.stack([m for _, m in objects]))
        pred.pred_boxes = Boxes(
            torch.tensor([a["bbox"] for a in d["annotations"]], dtype=torch.float32)
        )
        pred.pred_boxes.tensor[:, 2:] += pred.pred_boxes.tensor[:, :2]
        pred.pred_classes = torch.tensor([c for c, _ in objects])
        pred.scores = torch.ones(len(objects))
        evaluator.process([d], [{"instances": pred}])
    results = evaluator.evaluate()
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def write_coco(tmp_path, data, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def ann(ann_id, image_id, category_id, bbox, segmentation=None, **extra):
    """A COCO annotation; no "segmentation" key when ``segmentation`` is None."""
    d = dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=bbox, **extra)
    if segmentation is not None:
        d["segmentation"] = segmentation
    return d


def valid_coco(tmp_path):
    """Two 40x30 images on disk, one annotated square each, two categories."""
    image_root = tmp_path / "images"
    image_root.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(image_root / name), np.full((30, 40, 3), 100, np.uint8))
    square = [[5, 5, 15, 5, 15, 15, 5, 15]]
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 30, "width": 40},
            {"id": 2, "file_name": "b.png", "height": 30, "width": 40},
        ],
        "annotations": [
            ann(1, 1, 1, [5, 5, 10, 10], square, iscrowd=0),
            ann(2, 2, 2, [5, 5, 10, 10], square, iscrowd=0),
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def _drop_categories(d):
    del d["categories"]


def _unknown_image(d):
    d["annotations"][0]["image_id"] = 999


def _unknown_category(d):
    d["annotations"][1]["category_id"] = 77


def _duplicate_image(d):
    d["images"][1]["id"] = 1


def _bad_bbox(d):
    d["annotations"][0]["bbox"] = [1, 2, 3]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (_drop_categories, "has no top-level key 'categories'"),
        (_unknown_image, "annotation 1 refers to image_id 999"),
        (_unknown_category, "annotation 2 refers to category_id 77"),
        (_duplicate_image, "duplicate image id 1"),
        (_bad_bbox, "annotation 1 needs 'bbox' as 4 numbers"),
    ],
)
def test_bad_coco_json(tmp_path, corrupt, message):
    data = valid_coco(tmp_path)
    corrupt(data)
    json_file = write_coco(tmp_path, data)
    with pytest.raises(ValueError) as e:
        load_coco_json_checked(json_file, str(tmp_path / "images"))
    assert message in str(e.value) and json_file in str(e.value)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json_checked(str(tmp_path / "nope.json"), str(tmp_path))
    path = tmp_path / "broken.json"
    path.write_text('{"images": [],\n  "annotations": [oops]}')
    with pytest.raises(ValueError, match=r"broken.json' is not valid JSON: .* line 2"):
        load_coco_json_checked(str(path), str(tmp_path))


def test_unusable_annotations_are_skipped(tmp_path, caplog):
    data = valid_coco(tmp_path)
    data["images"].append({"id": 3, "file_name": "b.png", "height": 30, "width": 40})
    data["annotations"] += [
        ann(3, 1, 1, [5, 5, 0, 10], [[5, 5, 6, 5, 6, 6]]),
        ann(4, 1, 2, [5, 5, 4, 4], [[5, 5, 9, 9]]),
        ann(5, 1, 2, [5, 5, 4, 4]),
        ann(6, 2, 1, [0, 0, 40, 30], {"size": [30, 40], "counts": [0, 1200]}, iscrowd=1),
    ]
    json_file = write_coco(tmp_path, data)
    with caplog.at_level(logging.WARNING, logger="iuq_d2"):
        dicts = load_coco_json_checked(json_file, str(tmp_path / "images"), None)
    kept = [[(a["category_id"], a.get("iscrowd", 0)) for a in d["annotations"]] for d in dicts]
    assert kept == [[(1, 0)], [(2, 0), (1, 1)], []]
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("iuq_d2")]
    assert len(warnings) == 1
    assert "skipped 1 annotations with an empty box" in warnings[0]
    assert "2 without a polygon of at least 3 points" in warnings[0]

    mapper = CondInstDatasetMapper(make_cfg(), True)
    for d, expected in zip(dicts, (1, 1, 0)):
        assert len(mapper(d)["instances"]) == expected


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_collinear_polygon_with_a_box_trains_no_empty_mask(tmp_path, mask_format):
    """Three points on a line, with a positive box: the loader keeps the annotation (3 points),
    the mapper drops its instance, whose mask would be empty, in either mask format."""
    data = valid_coco(tmp_path)
    data["annotations"].append(ann(3, 1, 2, [20, 10, 10, 10], [[20, 10, 25, 15, 30, 20]]))
    d = load_coco_json_checked(write_coco(tmp_path, data), str(tmp_path / "images"))[0]
    assert [a["category_id"] for a in d["annotations"]] == [1, 2]
    cfg = make_cfg(
        **{
            "INPUT.MASK_FORMAT": mask_format,
            "INPUT.MIN_SIZE_TRAIN": (60,),  # twice the size
            "INPUT.RANDOM_FLIP": "none",
        }
    )
    instances = CondInstDatasetMapper(cfg, True)(d)["instances"]
    assert instances.gt_classes.tolist() == [1]
    assert instances.gt_boxes.tensor.tolist() == [[10, 10, 30, 30]]


@pytest.mark.parametrize("hflip", [True, False])
def test_hflip_train_switches_the_training_flip(hflip):
    """AdelaiDet's INPUT.HFLIP_TRAIN: False trains without the flip, test mapping never flips."""
    cfg = make_cfg(**{"INPUT.HFLIP_TRAIN": hflip})
    augs = [CondInstDatasetMapper(cfg, is_train).augmentations.augs for is_train in (True, False)]
    flips = [sum(isinstance(a, T.RandomFlip) for a in a_list) for a_list in augs]
    assert flips == [int(hflip), 0]


@pytest.fixture
def custom_names():
    names = []
    yield names
    for name in names:
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_register_custom_coco(tmp_path, custom_names):
    json_file = write_coco(tmp_path, valid_coco(tmp_path))
    image_root = str(tmp_path / "images")
    cfg = make_cfg(**{"DATASETS.CUSTOM_COCO": [["test_custom_pets", json_file, image_root]]})
    custom_names.append("test_custom_pets")
    register_custom_coco(cfg)
    register_custom_coco(cfg)
    assert MetadataCatalog.get("test_custom_pets").evaluator_type == "coco"
    dicts = DatasetCatalog.get("test_custom_pets")
    assert len(dicts) == 2 and MetadataCatalog.get("test_custom_pets").thing_classes == [
        "cat",
        "dog",
    ]


@pytest.mark.parametrize(
    "entry, message",
    [
        (["only_two", "x.json"], "DATASETS.CUSTOM_COCO[1] must be [name, json_file, image_root]"),
        (["bad_json", "{tmp}/missing.json", "{tmp}/images"], "DATASETS.CUSTOM_COCO[1]: json_file"),
        (["bad_root", "{tmp}/ann.json", "{tmp}/no_images"], "DATASETS.CUSTOM_COCO[1]: image_root"),
        (["shapes_val", "{tmp}/ann.json", "{tmp}/images"], "dataset name 'shapes_val' is already"),
    ],
)
def test_register_custom_coco_errors(tmp_path, custom_names, entry, message):
    write_coco(tmp_path, valid_coco(tmp_path))
    entries = [
        ["test_custom_ok", str(tmp_path / "ann.json"), str(tmp_path / "images")],
        [v.format(tmp=tmp_path) for v in entry],
    ]
    custom_names.append("test_custom_ok")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        register_custom_coco(make_cfg(**{"DATASETS.CUSTOM_COCO": entries}))


def test_check_num_classes(tmp_path, custom_names):
    json_file = write_coco(tmp_path, valid_coco(tmp_path))
    custom = [["test_custom_two", json_file, str(tmp_path / "images")]]
    custom_names.append("test_custom_two")
    cfg = make_cfg(**{"DATASETS.CUSTOM_COCO": custom, "DATASETS.TRAIN": ("shapes_train",)})
    register_custom_coco(cfg)
    with pytest.raises(
        ValueError, match="'shapes_train' .* has 4 categories .* MODEL.FCOS.NUM_CLASSES 4"
    ):
        check_num_classes(cfg)
    cfg.MODEL.FCOS.NUM_CLASSES = 4
    check_num_classes(cfg)
    cfg.DATASETS.TEST = ("test_custom_two",)
    with pytest.raises(
        ValueError, match="'test_custom_two' \\(in DATASETS.TEST\\) has 2 categories"
    ):
        check_num_classes(cfg)
    cfg.DATASETS.TEST = ("no_such_dataset",)
    with pytest.raises(ValueError, match="'no_such_dataset' in DATASETS.TEST is not registered"):
        check_num_classes(cfg)


def test_loader_matches_detectron2(shapes60, tmp_path):
    """Where nothing is skipped, the checked loader returns what detectron2's load_coco_json
    does, without a dataset name and with one (category ids mapped, metadata set)."""
    out_dir, _ = shapes60
    data = valid_coco(tmp_path)
    for category in data["categories"]:  # ids 5 and 6: not contiguous
        category["id"] += 4
    for annotation in data["annotations"]:
        annotation["category_id"] += 4
    rle = {"size": [30, 40], "counts": [0, 1200]}  # uncompressed, turned into compressed RLE
    data["annotations"].append(ann(3, 2, 6, [0, 0, 40, 30], rle, iscrowd=1))
    cases = [
        (os.path.join(out_dir, "annotations.json"), os.path.join(out_dir, "images")),
        (write_coco(tmp_path, data), str(tmp_path / "images")),
    ]
    for index, (json_file, image_root) in enumerate(cases):
        expected = load_coco_json(json_file, image_root)
        assert load_coco_json_checked(json_file, image_root) == expected
        names = [f"test_loader_{index}_d2", f"test_loader_{index}_checked"]
        try:
            expected = load_coco_json(json_file, image_root, names[0])
            assert load_coco_json_checked(json_file, image_root, names[1]) == expected
            reference, meta = (MetadataCatalog.get(name) for name in names)
            assert meta.thing_classes == reference.thing_classes
            assert meta.thing_dataset_id_to_contiguous_id == (
                reference.thing_dataset_id_to_contiguous_id
            )
        finally:
            for name in names:
                MetadataCatalog.remove(name)


def test_set_up_and_each_load_parse_the_json_once(tmp_path, custom_names, monkeypatch):
    """The class count at set-up and the first load share one parse; a later load, or one
    after the file changed, parses it once more."""
    data = valid_coco(tmp_path)
    json_file = write_coco(tmp_path, data)
    custom_names.append("test_custom_once")
    cfg = make_cfg(
        **{
            "DATASETS.CUSTOM_COCO": [["test_custom_once", json_file, str(tmp_path / "images")]],
            "DATASETS.TRAIN": ("test_custom_once",),
            "DATASETS.TEST": (),
            "MODEL.FCOS.NUM_CLASSES": 2,
        }
    )
    register_custom_coco(cfg)
    parsed = []
    real_load = json.load
    monkeypatch.setattr(json, "load", lambda f, **kw: parsed.append(f.name) or real_load(f, **kw))
    check_num_classes(cfg)
    assert parsed == [json_file]
    assert len(DatasetCatalog.get("test_custom_once")) == 2
    assert parsed == [json_file]
    assert len(DatasetCatalog.get("test_custom_once")) == 2
    assert parsed == [json_file] * 2

    loader = DatasetCatalog["test_custom_once"]
    assert loader.thing_classes() == ["cat", "dog"]
    data["images"].append({"id": 3, "file_name": "b.png", "height": 30, "width": 40})
    write_coco(tmp_path, data)
    assert len(DatasetCatalog.get("test_custom_once")) == 3
    assert parsed == [json_file] * 4


def make_iuq_cfg(**overrides):
    cfg = get_cfg()
    add_condinst_config(cfg)
    add_iuq_config(cfg)
    return set_keys(cfg, overrides)


def test_unknown_mapper_name_is_an_error_naming_the_key():
    cfg = make_iuq_cfg(**{"INPUT.DATASET_MAPPER_NAME": "mask2former"})
    message = r"INPUT.DATASET_MAPPER_NAME must be one of \['condinst', 'iuq'\], got 'mask2former'"
    for build in (train_mapper_class, Trainer.build_train_loader):
        with pytest.raises(ValueError, match=message):
            build(cfg)


@pytest.mark.parametrize(
    "arch, equi, name, error",
    [
        ("CondInst", True, "condinst", None),
        ("IUQCondInst", False, "condinst", None),
        ("IUQCondInst", True, "iuq", None),
        ("IUQCondInst", True, "condinst", "'condinst' does not make: set it to 'iuq'"),
        ("CondInst", True, "iuq", "'iuq' makes equivariance views.*set it to 'condinst'"),
        ("IUQCondInst", False, "iuq", "'iuq' makes equivariance views.*set it to 'condinst'"),
    ],
)
def test_mapper_makes_views_iff_the_model_trains_on_them(arch, equi, name, error):
    cfg = make_iuq_cfg(
        **{
            "MODEL.META_ARCHITECTURE": arch,
            "MODEL.IUQ.EQUI.ENABLED": equi,
            "INPUT.DATASET_MAPPER_NAME": name,
        }
    )
    mapper_class = train_mapper_class(cfg)
    assert mapper_class is {"condinst": CondInstDatasetMapper, "iuq": IUQDatasetMapper}[name]
    if error is None:
        check_mapper_views(cfg, mapper_class)
        return
    for check in (
        lambda: check_mapper_views(cfg, mapper_class),
        lambda: Trainer.build_train_loader(cfg),
    ):
        with pytest.raises(ValueError, match="INPUT.DATASET_MAPPER_NAME " + error):
            check()


@pytest.mark.parametrize(
    "config",
    sorted(
        os.path.relpath(os.path.join(root, f), REPO)
        for root, _, files in os.walk(os.path.join(REPO, "configs"))
        for f in files
        if f.endswith(".yaml")
    ),
)
def test_configs_name_the_mapper_their_model_needs(config):
    cfg = make_iuq_cfg()
    cfg.merge_from_file(os.path.join(REPO, config))
    check_mapper_views(cfg, train_mapper_class(cfg))


def test_mapper(shapes60):
    out_dir, data = shapes60
    dicts = load_coco_json_checked(
        os.path.join(out_dir, "annotations.json"), os.path.join(out_dir, "images")
    )
    cfg = make_cfg(**{"INPUT.MIN_SIZE_TRAIN": (256,), "INPUT.MAX_SIZE_TRAIN": 512})
    mapper = CondInstDatasetMapper(cfg, True)
    d = next(d for d in dicts if len(d["annotations"]) >= 4)
    original = copy.deepcopy(d)
    out = mapper(d)
    assert d == original
    image, instances = out["image"], out["instances"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and min(image.shape[1:]) == 256
    assert instances.image_size == tuple(image.shape[1:])
    assert len(instances) == len(d["annotations"])
    assert instances.gt_classes.tolist() == [a["category_id"] for a in d["annotations"]]
    mask_boxes = instances.gt_masks.get_bounding_boxes().tensor
    assert (mask_boxes - instances.gt_boxes.tensor).abs().max() < 2.0

    empty = mapper(next(d for d in dicts if not d["annotations"]))
    assert len(empty["instances"]) == 0 and empty["instances"].has("gt_masks")
    test_out = CondInstDatasetMapper(cfg, False)(d)
    assert "instances" not in test_out and test_out["image"].shape[0] == 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mapper_leaves_array_polygons_of_the_dataset_unchanged(shapes60, dtype):
    """detectron2 flips array polygons in place: the mapper must hand it copies, and the masks
    must be those of the same polygons given as lists."""
    out_dir, _ = shapes60
    dicts = load_coco_json_checked(
        os.path.join(out_dir, "annotations.json"), os.path.join(out_dir, "images")
    )
    as_lists = next(d for d in dicts if len(d["annotations"]) >= 4)
    as_arrays = copy.deepcopy(as_lists)
    for anno in as_arrays["annotations"]:
        anno["segmentation"] = [np.asarray(p, dtype=dtype) for p in anno["segmentation"]]
    original = copy.deepcopy(as_arrays)
    mapper = CondInstDatasetMapper(
        True,
        augmentations=[T.RandomFlip(prob=1.0)],
        image_format="BGR",
        use_instance_mask=True,
    )
    from_arrays = mapper(as_arrays)["instances"]
    for anno, before in zip(as_arrays["annotations"], original["annotations"]):
        for polygon, polygon_before in zip(anno["segmentation"], before["segmentation"]):
            assert polygon.dtype == dtype and np.array_equal(polygon, polygon_before)
    from_lists = mapper(as_lists)["instances"]
    assert torch.equal(_raster(from_arrays), _raster(from_lists))


def test_mapper_keeps_the_fractions_of_integer_coordinates(shapes60):
    """detectron2 resizes the arrays it makes of a box and polygons in place, which truncates
    integer coordinates; the mapper hands it floats."""
    out_dir, _ = shapes60
    d = load_coco_json_checked(
        os.path.join(out_dir, "annotations.json"), os.path.join(out_dir, "images")
    )[0]
    h, w = d["height"], d["width"]
    d = dict(d, annotations=[dict(d["annotations"][0])])
    d["annotations"][0].update(
        bbox=[3, 5, 10, 7],
        bbox_mode=BoxMode.XYWH_ABS,
        segmentation=[[3, 5, 13, 5, 13, 12, 3, 12]],
    )
    new_h, new_w = 3 * h // 2, 3 * w // 2
    mapper = CondInstDatasetMapper(
        True, augmentations=[T.Resize((new_h, new_w))], image_format="BGR", use_instance_mask=True
    )
    instances = mapper(d)["instances"]
    sx, sy = new_w / w, new_h / h
    expected = torch.tensor([[3 * sx, 5 * sy, 13 * sx, 12 * sy]])
    torch.testing.assert_close(instances.gt_boxes.tensor, expected)
    polygon = torch.as_tensor(instances.gt_masks.polygons[0][0]).reshape(-1, 2)
    torch.testing.assert_close(polygon.min(0).values, expected[0, :2].double())
    torch.testing.assert_close(polygon.max(0).values, expected[0, 2:].double())


def _raster(instances):
    """The instances' polygon masks as a [N, H, W] bool tensor."""
    return BitMasks.from_polygon_masks(instances.gt_masks, *instances.image_size).tensor


def test_mapper_errors(shapes60, tmp_path):
    out_dir, data = shapes60
    d = load_coco_json_checked(
        os.path.join(out_dir, "annotations.json"), os.path.join(out_dir, "images")
    )[0]
    mapper = CondInstDatasetMapper(make_cfg(), True)
    missing = dict(d, file_name=str(tmp_path / "gone.png"), image_id=42)
    with pytest.raises(FileNotFoundError, match=r"gone.png' \(image_id 42\)"):
        mapper(missing)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(FileNotFoundError, match="Cannot read image '.*junk.png'"):
        mapper(dict(d, file_name=str(tmp_path / "junk.png")))
    with pytest.raises(Exception, match="Mismatched image shape for image .*000000.png"):
        mapper(dict(d, width=d["width"] + 1))
