"""Weights for evaluation load completely or not at all: a checkpoint in AdelaiDet's layout
evaluates through train_net's ``--eval-only`` with every one of its weights, a mis-keyed one
fails naming the keys, and training still starts from partial (ImageNet) weights."""

import json
import os
import re
from typing import Dict

import pytest
import torch
from detectron2.modeling import build_model

from iuq_d2.data import ensure_shapes
from iuq_d2.engine import AtomicCheckpointer, CheckpointMismatchError, StrictCheckpointer, Trainer
from iuq_d2.engine.entry import build_argument_parser, main
from iuq_d2.strip_checkpoint import strip_checkpoint

from .conftest import REPO, tiny_config

DATA = os.path.join(REPO, "tests", "data")
ADELAIDET_CONFIG = os.path.join(DATA, "adelaidet_condinst_R50_config.yaml")
# Keys and shapes of AdelaiDet's CondInst R50 state dict (dumped from AdelaiDet itself).
ADELAIDET_KEYS = os.path.join(DATA, "adelaidet_condinst_R50_state_dict.tsv")
DTYPES = {"float32": torch.float32, "int64": torch.int64}
NUM_COCO_CLASSES = 80


def adelaidet_state_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """A state dict with AdelaiDet's keys, shapes and dtypes, and values that are not our
    model's initialisation: random weights, positive BN variances, AdelaiDet's buffers."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    with open(ADELAIDET_KEYS) as f:
        next(f)  # header
        for line in f:
            key, shape, dtype = line.rstrip("\n").split("\t")
            size = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
            if key.endswith("sizes_of_interest"):
                value = torch.tensor([64, 128, 256, 512, 1024])
            elif key.endswith("running_var"):
                value = 0.5 + torch.rand(size, generator=generator)
            elif DTYPES[dtype] == torch.int64:
                value = torch.zeros(size, dtype=torch.int64)
            else:
                value = 0.01 * torch.randn(size, generator=generator)
            state[key] = value
    return state


@pytest.fixture(scope="module")
def adelaidet_state():
    return adelaidet_state_dict()


@pytest.fixture(scope="module")
def coco_like_shapes(tmp_path_factory):
    """Two shapes images in a json with COCO's 80 categories (an AdelaiDet model's classes):
    DATASETS.CUSTOM_COCO of a dataset named adelaidet_test."""
    root = tmp_path_factory.mktemp("adelaidet_shapes")
    json_file = ensure_shapes(str(root), 2, 3)
    with open(json_file) as f:
        data = json.load(f)
    data["categories"] = [
        {"id": i, "name": f"class{i}"} for i in range(1, NUM_COCO_CLASSES + 1)
    ]  # the shapes' ids 1, 2, ... stay valid
    coco_json = str(root / "coco80.json")
    with open(coco_json, "w") as f:
        json.dump(data, f)
    return [["adelaidet_test", coco_json, str(root / "images")]]


def _eval_args(output_dir, weights: str, data):
    argv = ["--config-file", ADELAIDET_CONFIG, "--eval-only"]
    argv += ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(output_dir)]
    argv += ["DATASETS.CUSTOM_COCO", repr(data), "DATASETS.TEST", "('adelaidet_test',)"]
    argv += ["INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192"]
    return build_argument_parser().parse_args(argv + ["DATALOADER.NUM_WORKERS", "0"])


def test_adelaidet_checkpoint_evaluates_with_every_weight(
    tmp_path, adelaidet_state, coco_like_shapes, monkeypatch
):
    """AdelaiDet's config.yaml and a checkpoint of its layout, as its training writes them."""
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": adelaidet_state, "iteration": 89999}, weights)
    evaluated = []
    test = Trainer.test

    def record_and_test(cfg, model, evaluators=None):
        evaluated.append({k: v.clone() for k, v in model.state_dict().items()})
        return test(cfg, model, evaluators)

    monkeypatch.setattr(Trainer, "test", record_and_test)
    results = main(_eval_args(tmp_path / "eval", weights, coco_like_shapes))
    assert set(results) == {"bbox", "segm"}
    assert (tmp_path / "eval" / "eval_results.json").is_file()
    (model,) = evaluated
    assert model.keys() == adelaidet_state.keys()
    for key, value in adelaidet_state.items():
        assert torch.equal(model[key], value), key


def test_miskeyed_adelaidet_checkpoint_fails_naming_the_keys(
    tmp_path, adelaidet_state, coco_like_shapes
):
    """The FCOS head saved at the top level (a converter's slip): 43 keys are missing, 43
    unexpected; detectron2's checkpointer would log them and evaluate a random head."""
    head = "proposal_generator.fcos_head."
    state = {k.replace(head, "fcos_head."): v for k, v in adelaidet_state.items()}
    renamed = sum(k.startswith(head) for k in adelaidet_state)
    weights = str(tmp_path / "model_final.pth")
    torch.save({"model": state}, weights)
    with pytest.raises(CheckpointMismatchError) as error:
        main(_eval_args(tmp_path / "eval", weights, coco_like_shapes))
    message = str(error.value)
    assert weights in message
    total = len(adelaidet_state)
    assert f"{renamed} of the model's {total} keys are missing: {head}bbox_pred.bias" in message
    assert f"{renamed} keys are not in the model: fcos_head.bbox_pred.bias" in message
    assert "another shape" not in message
    assert not (tmp_path / "eval" / "eval_results.json").exists()


def _save(tmp_path, name: str, model_state) -> str:
    path = str(tmp_path / f"{name}.pth")
    torch.save({"model": model_state}, path)
    return path


def _iuq_config(**overrides):
    return tiny_config(**{"MODEL.META_ARCHITECTURE": "IUQCondInst", **overrides})


def test_training_only_state_may_be_missing_or_extra(tmp_path):
    """An IUQ checkpoint loads into CondInst (bank unused), a stripped one into IUQ-CondInst
    (bank empty), a CondInst one with AdelaiDet's semantic head into one without it, and one
    without the mask head's config-made buffers."""
    iuq = build_model(_iuq_config()).state_dict()
    assert any(k.startswith("inter_scene.bank.") for k in iuq)
    StrictCheckpointer(build_model(tiny_config())).load(_save(tmp_path, "iuq", iuq))
    stripped = strip_checkpoint({"model": iuq})["model"]
    StrictCheckpointer(build_model(_iuq_config())).load(_save(tmp_path, "stripped", stripped))
    sem_on = {"MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON": True}
    semantic = build_model(tiny_config(**sem_on)).state_dict()
    assert any(k.startswith("mask_branch.seg_head.") for k in semantic)
    del semantic["mask_head._iter"], semantic["mask_head.sizes_of_interest"]
    StrictCheckpointer(build_model(tiny_config())).load(_save(tmp_path, "sem", semantic))


def test_missing_unexpected_and_reshaped_keys_are_counted_and_named(tmp_path):
    state = build_model(tiny_config(**{"MODEL.FCOS.NUM_CLASSES": 5})).state_dict()
    state["controller_extra.weight"] = state.pop("controller.weight")
    del state["controller.bias"]
    model = build_model(tiny_config())  # 3 classes
    total = len(model.state_dict())
    with pytest.raises(CheckpointMismatchError) as error:
        StrictCheckpointer(model).load(_save(tmp_path, "bad", state))
    message = str(error.value)
    assert f"2 of the model's {total} keys are missing: controller.bias, controller.weight;" in (
        message
    )
    assert "1 keys are not in the model: controller_extra.weight;" in message
    logits = "proposal_generator.fcos_head.cls_logits"
    assert re.search(
        rf"2 keys have another shape: {logits}.bias \(5,\) \(model \(3,\)\), "
        rf"{logits}.weight \(5, 32, 3, 3\) \(model \(3, 32, 3, 3\)\)\.",
        message,
    ), message


def test_long_key_lists_are_cut_but_counted(tmp_path):
    model = build_model(tiny_config())
    state = {"other." + k: v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"\.\.\. \(\d+ more\)") as error:
        StrictCheckpointer(model).load(_save(tmp_path, "other", state))
    assert f"{len(state)} keys are not in the model" in str(error.value)


def test_no_weights_is_an_error_for_evaluation():
    with pytest.raises(CheckpointMismatchError, match="MODEL.WEIGHTS is empty"):
        StrictCheckpointer(build_model(tiny_config())).load("")


def test_training_still_starts_from_partial_weights(tmp_path):
    """detectron2's behaviour for ImageNet weights: the backbone loads, the rest is new."""
    model = build_model(tiny_config())
    backbone = {k: torch.ones_like(v) for k, v in model.state_dict().items() if ".bottom_up." in k}
    AtomicCheckpointer(model).load(_save(tmp_path, "backbone", backbone))
    for key, value in backbone.items():
        assert torch.equal(model.state_dict()[key], value), key
