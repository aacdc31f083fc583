"""COCO masks as polygons, compressed RLE and uncompressed RLE: the mask format chosen at set-up,
training on each, the equivariance views of RLE masks, and malformed RLE stopping at set-up."""

import json
import logging
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from iuq_d2.data import IUQDatasetMapper, coco_loader, coco_validation, load_coco_json_checked
from iuq_d2.data import datasets as iuq_datasets
from iuq_d2.data.coco_validation import rle_string_counts
from iuq_d2.data.shapes import mask_to_polygons
from iuq_d2.engine.config_loader import load_config
from iuq_d2.engine.entry import build_argument_parser, main

from .conftest import DEMO_CONFIG

ENCODINGS = ("polygon", "rle", "rle_uncompressed")
HEIGHT, WIDTH = 96, 128


def uncompressed_rle(mask):
    """COCO's uncompressed RLE of a binary mask: run lengths in column-major order, starting
    with a run of zeros."""
    flat = mask.flatten(order="F")
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], starts, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": [0] + runs if flat[0] else runs}


def encode(mask, encoding):
    if encoding == "polygon":
        return mask_to_polygons(mask)
    if encoding == "rle":
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return uncompressed_rle(mask)


def tiny_masks(index):
    """2-3 disjoint masks (an ellipse, a rectangle with a notch, a triangle) of image ``index``."""
    rng = np.random.default_rng(index)
    masks = []
    ellipse = np.zeros((HEIGHT, WIDTH), np.uint8)
    center = (int(rng.integers(20, 44)), int(rng.integers(20, 76)))
    cv2.ellipse(ellipse, center, (14, 10), 0, 0, 360, 1, -1)
    masks.append(ellipse)
    rectangle = np.zeros((HEIGHT, WIDTH), np.uint8)
    x0, y0 = int(rng.integers(64, 90)), int(rng.integers(8, 40))
    rectangle[y0 : y0 + 30, x0 : x0 + 26] = 1
    rectangle[y0 : y0 + 8, x0 : x0 + 8] = 0
    masks.append(rectangle)
    if index % 2 == 0:
        triangle = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.fillPoly(triangle, [np.array([[10, 90], [50, 90], [30, 60]], np.int32)], 1)
        masks.append(triangle)
    return [m.astype(bool) for m in masks]


def write_dataset(root, encoding, num_images=4):
    """A COCO dataset of ``num_images`` images under ``root`` with masks in ``encoding``, and
    one crowd region as compressed RLE; returns [json_file, image_root]."""
    image_root = root / "images"
    image_root.mkdir(parents=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng(100 + index)
        image = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        masks = tiny_masks(index)
        for k, mask in enumerate(masks):
            image[mask] = (200, 80 + 60 * k, 40)
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": k + 1,
                    "bbox": box,
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": encode(mask, encoding),
                }
            )
        cv2.imwrite(str(image_root / f"{index}.png"), image)
        images.append(
            {"id": index + 1, "file_name": f"{index}.png", "height": HEIGHT, "width": WIDTH}
        )
    crowd = np.zeros((HEIGHT, WIDTH), bool)
    crowd[80:, 100:] = True
    annotations.append(
        {
            "id": len(annotations) + 1,
            "image_id": 1,
            "category_id": 1,
            "bbox": [100, 80, 28, 16],
            "iscrowd": 1,
            "segmentation": encode(crowd, "rle"),
        }
    )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(("a", "b", "c"))]
    json_file = root / "annotations.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return [str(json_file), str(image_root)]


@pytest.fixture
def custom_datasets(tmp_path):
    """Writes datasets by encoding; returns the DATASETS.CUSTOM_COCO entries, each named
    ``masks_<encoding>_<tmp dir>`` (unique per test), and unregisters them after."""
    entries = {}

    def make(*encodings):
        for encoding in encodings:
            name = f"masks_{encoding}_{tmp_path.name}"
            entries[encoding] = [name, *write_dataset(tmp_path / encoding, encoding)]
        return [entries[e] for e in encodings]

    yield make
    for name, *_ in entries.values():
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def opts(entries, *extra):
    return [
        "DATASETS.CUSTOM_COCO",
        repr(entries),
        "DATASETS.TRAIN",
        repr(tuple(name for name, *_ in entries)),
        "DATASETS.TEST",
        "()",
        "MODEL.FCOS.NUM_CLASSES",
        "3",
        *extra,
    ]


def test_rle_string_counts_reads_what_pycocotools_writes():
    for index in range(4):
        for mask in tiny_masks(index):
            rle = encode(mask, "rle")
            assert rle_string_counts(rle["counts"]) == uncompressed_rle(mask)["counts"]
    assert rle_string_counts("k4:d") is None  # ends inside a run
    assert rle_string_counts("k4 ") is None  # a character outside the alphabet


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_each_encoding_loads_as_the_source_masks(tmp_path, encoding):
    json_file, image_root = write_dataset(tmp_path, encoding)
    dicts = load_coco_json_checked(json_file, image_root)
    for d in dicts:
        annotations = [a for a in d["annotations"] if not a["iscrowd"]]
        for annotation, mask in zip(annotations, tiny_masks(d["image_id"] - 1), strict=True):
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, list):
                rles = mask_util.frPyObjects(segmentation, HEIGHT, WIDTH)
                segmentation = mask_util.merge(rles)
            decoded = mask_util.decode(segmentation).astype(bool)
            assert np.array_equal(decoded, mask)


@pytest.mark.parametrize(
    "encodings, chosen",
    [
        (("polygon",), "polygon"),
        (("rle",), "bitmask"),
        (("rle_uncompressed",), "bitmask"),
        (("polygon", "rle"), "bitmask"),
    ],
)
def test_mask_format_is_chosen_from_the_training_data(custom_datasets, caplog, encodings, chosen):
    entries = custom_datasets(*encodings)
    with caplog.at_level(logging.INFO, logger="iuq_d2.data"):
        cfg = load_config(DEMO_CONFIG, opts(entries))
    assert cfg.INPUT.MASK_FORMAT == chosen
    lines = [r.getMessage() for r in caplog.records if "INPUT.MASK_FORMAT" in r.getMessage()]
    assert len(lines) == 1
    assert f"INPUT.MASK_FORMAT {chosen!r} (configured 'polygon')" in lines[0]
    for encoding, (name, *_) in zip(encodings, entries):
        assert name in lines[0]
        what = "polygons" if encoding == "polygon" else "RLE masks"
        assert f"{what} in [" in lines[0]


def test_rle_only_in_a_test_dataset_or_in_crowd_regions_keeps_polygons(custom_datasets):
    polygons, rle = custom_datasets("polygon", "rle")
    train, test = repr((polygons[0],)), repr((rle[0],))
    cfg = load_config(
        DEMO_CONFIG, opts([polygons, rle], "DATASETS.TRAIN", train, "DATASETS.TEST", test)
    )
    assert cfg.INPUT.MASK_FORMAT == "polygon"  # the crowd RLE of the polygon dataset: not trained


def test_set_up_and_the_first_load_check_the_json_once(custom_datasets, monkeypatch):
    (entry,) = custom_datasets("rle")
    checked = []

    def check_coco(data, json_file):
        checked.append(json_file)
        coco_validation.check_coco(data, json_file)

    for module in (iuq_datasets, coco_loader):
        monkeypatch.setattr(module, "check_coco", check_coco)
    load_config(DEMO_CONFIG, opts([entry]))
    load_config(DEMO_CONFIG, opts([entry]))
    assert checked == [entry[1]]
    assert len(DatasetCatalog.get(entry[0])) == 4
    assert checked == [entry[1]]
    assert len(DatasetCatalog.get(entry[0])) == 4  # a parse of its own, checked again
    assert checked == [entry[1]] * 2


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_each_encoding_trains(tmp_path, custom_datasets, encoding):
    out = tmp_path / "run"
    argv = ["--config-file", DEMO_CONFIG]
    argv += opts(
        custom_datasets(encoding),
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.WARMUP_ITERS",
        "1",
        "SOLVER.STEPS",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(out),
    )
    main(build_argument_parser().parse_args(argv))
    with open(out / "metrics.json") as f:
        losses = [json.loads(line)["total_loss"] for line in f if '"total_loss"' in line]
    assert len(losses) >= 1 and all(np.isfinite(losses))
    assert os.path.exists(out / "model_final.pth")


def test_mixed_encodings_train_iuq_with_views(tmp_path, custom_datasets):
    out = tmp_path / "run"
    argv = ["--config-file", DEMO_CONFIG]
    argv += opts(
        custom_datasets("polygon", "rle"),
        "MODEL.META_ARCHITECTURE",
        "IUQCondInst",
        "INPUT.DATASET_MAPPER_NAME",
        "iuq",
        "MODEL.IUQ.EQUI.ENABLED",
        "True",
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.WARMUP_ITERS",
        "1",
        "SOLVER.STEPS",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(out),
    )
    main(build_argument_parser().parse_args(argv))
    assert os.path.exists(out / "model_final.pth")


@pytest.mark.parametrize("encoding", ["rle", "rle_uncompressed"])
def test_views_of_rle_masks_are_the_transformed_source_masks(tmp_path, encoding):
    json_file, image_root = write_dataset(tmp_path, encoding)
    cfg = load_config(DEMO_CONFIG, freeze=False)
    cfg.INPUT.MASK_FORMAT = "bitmask"
    # The base augmentation is the identity, so that I's masks are the source masks.
    cfg.INPUT.MIN_SIZE_TRAIN = (HEIGHT,)
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.MODEL.IUQ.EQUI.CROP_SIZE = (0.5, 0.9)
    cfg.MODEL.IUQ.EQUI.SCALES = (0.75,)
    cfg.MODEL.IUQ.EQUI.FLIP_PROB = 1.0
    mapper = IUQDatasetMapper(cfg, True)
    d = load_coco_json_checked(json_file, image_root)[0]
    source = tiny_masks(0)
    np.random.seed(3)
    num_view_instances = 0
    for _ in range(8):  # crops of a 96 x 128 image on a 32-pixel grid are small: draw several
        out = mapper(d)
        instances, view = out["instances"], out["view"]
        assert instances.gt_ids.tolist() == [0, 1, 2]  # the crowd region (3) is not an instance
        assert torch.equal(instances.gt_masks.tensor, torch.as_tensor(np.stack(source)))
        g = view["transforms"]
        assert [type(t).__name__ for t in g.transforms] == [
            "CropTransform",
            "HFlipTransform",
            "ResizeTransform",
        ]
        vinst = view["instances"]
        assert vinst.gt_masks.tensor.shape[1:] == view["image"].shape[1:]
        for mask, index in zip(vinst.gt_masks.tensor, vinst.gt_ids.tolist()):
            expected = g.apply_segmentation(source[index].astype(np.uint8)).astype(bool)
            assert torch.equal(mask, torch.as_tensor(expected))
        assert torch.equal(vinst.gt_boxes.tensor, vinst.gt_masks.get_bounding_boxes().tensor)
        num_view_instances += len(vinst)
    assert num_view_instances >= 4


def _size_of_another_image(ann):
    ann["segmentation"]["size"] = [HEIGHT, WIDTH + 1]


def _no_counts(ann):
    del ann["segmentation"]["counts"]


def _size_not_a_pair(ann):
    ann["segmentation"]["size"] = HEIGHT


def _counts_not_a_string(ann):
    ann["segmentation"]["counts"] = 17


def _counts_cut_inside_a_run(ann):
    ann["segmentation"]["counts"] += "k"  # a character that says more of the run follows


def _runs_short_of_the_image(ann):
    ann["segmentation"]["counts"] = uncompressed_rle(tiny_masks(0)[0])["counts"][:-1]


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (_size_of_another_image, "'size' [96, 129] is not the image's [height, width] [96, 128]"),
        (_no_counts, "it lacks ['counts']"),
        (_size_not_a_pair, "'size' must be [height, width], got 96"),
        (_counts_not_a_string, "'counts' must be a string (compressed RLE) or a list of integers"),
        (_counts_cut_inside_a_run, "its compressed 'counts' string does not decode"),
        (_runs_short_of_the_image, "its 'counts' do not decode into the 12288 pixels"),
    ],
)
def test_malformed_rle_stops_at_set_up(custom_datasets, corrupt, problem):
    (entry,) = custom_datasets("rle")
    with open(entry[1]) as f:
        data = json.load(f)
    corrupt(data["annotations"][1])
    with open(entry[1], "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError) as e:
        load_config(DEMO_CONFIG, opts([entry]))
    message = str(e.value)
    assert message.startswith(f"'{entry[1]}': annotation 2 has an RLE 'segmentation'")
    assert problem in message and "DATASETS.CUSTOM_COCO" in message


def test_rle_with_polygon_format_is_an_error_naming_the_key(tmp_path):
    """Where set-up cannot see the encoding (a dataset registered elsewhere), the mapper says
    what to set instead of detectron2's "Cannot create polygons"."""
    json_file, image_root = write_dataset(tmp_path, "rle")
    cfg = load_config(DEMO_CONFIG, freeze=False)
    mapper = IUQDatasetMapper(cfg, True)
    with pytest.raises(ValueError, match="RLE mask.*set INPUT.MASK_FORMAT bitmask"):
        mapper(load_coco_json_checked(json_file, image_root)[0])
