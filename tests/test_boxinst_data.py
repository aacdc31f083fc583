"""BoxInst's data path: a box-only COCO json trains BoxInst with no extra option and is refused,
naming the dataset and its first annotation, for a mask-supervised model; the demo's BoxInst
configs and the ablation's BoxInst variant."""

import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from iuq_d2 import demo
from iuq_d2.data import CondInstDatasetMapper, load_coco_json_checked
from iuq_d2.engine.config_loader import load_config

from .conftest import DEMO_CONFIG, REPO

BOXINST_DEMO = os.path.join(REPO, "configs", "Demo", "shapes_BoxInst.yaml")
CELLS_BOXINST_DEMO = os.path.join(REPO, "configs", "Demo", "cells_BoxInst.yaml")


def box_only_coco(tmp_path):
    """Two 128x160 images on disk and a json whose annotations have boxes and no masks (one
    without the key, one with an empty list), two categories, one crowd region with a mask."""
    root = tmp_path / "images"
    root.mkdir()
    g = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(root / name), g.integers(0, 256, (128, 160, 3), dtype=np.uint8))
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 128, "width": 160},
            {"id": 2, "file_name": "b.png", "height": 128, "width": 160},
        ],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [10, 12, 50, 40]},
            {
                "id": 8,
                "image_id": 2,
                "category_id": 2,
                "bbox": [60, 30, 40, 70],
                "segmentation": [],
            },
            {
                "id": 9,
                "image_id": 2,
                "category_id": 1,
                "bbox": [0, 0, 20, 20],
                "iscrowd": 1,
                "segmentation": {"size": [128, 160], "counts": [0, 20480]},
            },
        ],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(data))
    return str(path), str(root)


def custom_opts(tmp_path, json_file, root, *extra):
    name = f"box_only_{abs(hash(str(tmp_path)))}"
    return name, [
        *("DATASETS.CUSTOM_COCO", repr([[name, json_file, root]])),
        *("DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)"),
        *("MODEL.FCOS.NUM_CLASSES", "2", "MODEL.DEVICE", "cpu"),
        *extra,
    ]


def test_box_only_json_keeps_its_boxes(tmp_path):
    json_file, root = box_only_coco(tmp_path)
    dicts = load_coco_json_checked(json_file, root)
    kept = [[(a["category_id"], a.get("iscrowd", 0)) for a in d["annotations"]] for d in dicts]
    assert kept == [[(1, 0)], [(2, 0), (1, 1)]]
    assert all(
        "segmentation" not in a for a in dicts[0]["annotations"] + dicts[1]["annotations"][:1]
    )


def test_mask_supervised_model_refuses_a_box_only_dataset(tmp_path):
    json_file, root = box_only_coco(tmp_path)
    name, opts = custom_opts(tmp_path, json_file, root)
    with pytest.raises(ValueError) as e:
        load_config(DEMO_CONFIG, opts)
    message = str(e.value)
    assert f"Dataset '{name}'" in message and "id 7 of image_id 1" in message
    assert "MODEL.BOXINST.ENABLED" in message and json_file in message


def test_mask_mapper_names_the_image_of_a_maskless_annotation(tmp_path):
    json_file, root = box_only_coco(tmp_path)
    cfg = load_config(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"])
    mapper = CondInstDatasetMapper(cfg, True)
    with pytest.raises(ValueError, match=r"a\.png.*has no 'segmentation'.*MODEL\.BOXINST"):
        mapper(load_coco_json_checked(json_file, root)[0])


def test_boxinst_trains_on_a_box_only_dataset(tmp_path):
    json_file, root = box_only_coco(tmp_path)
    name, opts = custom_opts(tmp_path, json_file, root, "MODEL.FCOS.NORM", "")
    cfg = load_config(BOXINST_DEMO, opts)
    mapper = CondInstDatasetMapper(cfg, True)
    batch = [mapper(d) for d in DatasetCatalog.get(name)]
    assert [len(x["instances"]) for x in batch] == [1, 1]
    assert not any(x["instances"].has("gt_masks") for x in batch)
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert {"loss_prj", "loss_pairwise"} <= set(losses) and "loss_mask" not in losses
    assert all(torch.isfinite(v) for v in losses.values())


def test_boxinst_mapper_reads_no_masks_where_the_data_has_them():
    cfg = load_config(BOXINST_DEMO, ["MODEL.DEVICE", "cpu"])
    mapper = CondInstDatasetMapper(cfg, True)
    assert not mapper.use_instance_mask and not mapper.recompute_boxes
    out = mapper(DatasetCatalog.get("shapes_val")[0])
    assert len(out["instances"]) > 0 and not out["instances"].has("gt_masks")


def load_ablation():
    spec = importlib.util.spec_from_file_location(
        "ablation", os.path.join(REPO, "benchmarks", "ablation.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_config_is_the_ablation_variant():
    """benchmarks/ablation.py's "BoxInst" on the demo config trains what
    configs/Demo/shapes_BoxInst.yaml does (the cells one adds the cells recipe)."""
    variant = load_ablation().VARIANTS["BoxInst"]
    from_variant = load_config(DEMO_CONFIG, variant + ["OUTPUT_DIR", "x"])
    from_demo = load_config(BOXINST_DEMO, ["OUTPUT_DIR", "x"])
    assert from_variant.dump() == from_demo.dump()
    cells = load_config(CELLS_BOXINST_DEMO)
    assert cells.DATASETS.TRAIN == ("cells_train",) and cells.MODEL.FCOS.NUM_CLASSES == 2
    assert cells.SOLVER.MAX_ITER == 1400 and cells.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS == 150


def test_demo_boxinst_flag_trains_boxinst(monkeypatch, capsys):
    trained = []

    def fake_run(name, opts, num_vis):
        trained.append((name, demo.CONFIGS[name]))
        return {
            "ap": {key: 1.0 for key in demo.AP_COLUMNS},
            "dataset": "shapes_val",
            "iterations": 2,
            "minutes": 0.1,
            "output": "out",
            "pictures": "out/vis",
            "curves": "out/curves.png",
        }

    monkeypatch.setattr(demo, "run", fake_run)
    demo.main(["--boxinst", "--baseline", "SOLVER.MAX_ITER", "2"])
    assert [name for name, _ in trained] == ["BoxInst", "CondInst"]
    assert trained[0][1] == BOXINST_DEMO
    assert "BoxInst" in capsys.readouterr().out


def test_box_only_validation_set_is_scored_on_boxes(tmp_path):
    """COCOeval's segm task needs masks in the ground truth: a box-only test set gets box AP."""
    from iuq_d2.engine.trainer import Trainer

    json_file, root = box_only_coco(tmp_path)
    name, opts = custom_opts(tmp_path, json_file, root)
    cfg = load_config(BOXINST_DEMO, opts + ["OUTPUT_DIR", str(tmp_path / "out")])
    assert Trainer.build_evaluator(cfg, name)._tasks == ("bbox",)
    assert Trainer.build_evaluator(cfg, "shapes_val")._tasks == ("bbox", "segm")
