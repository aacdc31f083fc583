"""iuq_d2.convert's mmdetection tables without mmdetection: a torchvision ResNet-50 mapped onto
detectron2's gives the same res3-res5, the CondInst table covers our model exactly, and
checkpoints that are not mmdetection's R-50 CondInst are refused by name."""

import os
import sys
import types

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_resnet_backbone

from iuq_d2.convert import convert_mmdet_condinst, mmdet_condinst_key_pairs, resnet_key_pairs
from iuq_d2.convert.__main__ import main as convert_main
from iuq_d2.engine.config_loader import load_config
from iuq_d2.export.traceable import TraceableCondInst

from .conftest import REPO

CONFIG = os.path.join(REPO, "configs", "CondInst", "mmdet_R_50_ms_poly_90k.yaml")


def mmdet_config(*opts):
    return load_config(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])


def randomise_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter and BN statistic drawn at random, so that no mapping can pass by
    coincidence (a freshly built network's BN statistics are all 0 and 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if t.dim() == 4:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
            elif name.endswith(("running_var", "weight")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def test_torchvision_resnet50_gives_same_res3_to_res5():
    """mmdetection's backbone is torchvision's ResNet-50 (names and strides); mapped by
    resnet_key_pairs onto detectron2's ResNet with STRIDE_IN_1X1 False (the shipped config), a
    random one gives the same stage outputs, on an input whose sides are not multiples of 32."""
    tv = torchvision.models.resnet50(weights=None).eval()
    randomise_(tv, seed=0)
    cfg = mmdet_config()
    ours = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    source = tv.state_dict()
    mapped = {dst: source[src] for src, dst in resnet_key_pairs() if dst is not None}
    ours.load_state_dict(mapped, strict=True)
    assert set(source) - {src for src, _ in resnet_key_pairs()} == {"fc.weight", "fc.bias"}

    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        expected = {}
        for stage, name in zip(
            (tv.layer1, tv.layer2, tv.layer3, tv.layer4), ("res2", "res3", "res4", "res5")
        ):
            y = stage(y)
            expected[name] = y
        got = ours(x)
    assert sorted(got) == ["res3", "res4", "res5"]
    for name, value in got.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def condinst():
    return build_model(mmdet_config()).eval()


def mmdet_state_dict_of(model: torch.nn.Module) -> dict:
    """What an mmdetection checkpoint of ``model``'s weights holds, by the table read backwards
    (num_batches_tracked of frozen BNs, which we do not keep, as zeros; Scale as 0-d)."""
    ours = model.state_dict()
    state = {}
    for src, dst in mmdet_condinst_key_pairs():
        value = ours[dst] if dst is not None else torch.zeros((), dtype=torch.int64)
        state[src] = value.reshape(()) if ".scales." in src else value.clone()
    return state


def test_table_covers_our_condinst_exactly(condinst):
    pairs = mmdet_condinst_key_pairs()
    sources = [src for src, _ in pairs]
    targets = [dst for _, dst in pairs if dst is not None]
    assert len(set(sources)) == len(sources) == 423  # mmdetection 3.3.0's R-50 CondInst
    assert len(set(targets)) == len(targets)
    state = mmdet_state_dict_of(condinst)
    converted = convert_mmdet_condinst(state)
    missing, unexpected = condinst.load_state_dict(converted, strict=False)
    assert not missing and not unexpected
    for key, value in condinst.state_dict().items():
        # The buffers the converter writes agree with what the config builds.
        assert torch.equal(converted[key], value), key


def test_refuses_other_checkpoints_by_name(condinst):
    state = mmdet_state_dict_of(condinst)
    deeper = dict(state, **{"backbone.layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)})
    with pytest.raises(ValueError, match=r"unknown key 'backbone\.layer3\.6\.conv1\.weight'"):
        convert_mmdet_condinst(deeper)
    del state["bbox_head.controller.bias"]
    with pytest.raises(ValueError, match=r"missing key 'bbox_head\.controller\.bias'"):
        convert_mmdet_condinst(state)


class MessageHubLike:
    """Stands for an mmengine object in a checkpoint's meta; its module is gone at load time."""


def test_command_line_without_mmengine_objects(condinst, tmp_path):
    """A checkpoint whose meta pickles objects of a module that cannot be imported (mmengine's,
    where mmdetection is not installed) converts, and detectron2's checkpointer loads it."""
    module = types.ModuleType("iuq_fake_mmengine")
    MessageHubLike.__module__ = module.__name__
    module.MessageHubLike = MessageHubLike
    sys.modules[module.__name__] = module
    source, target = str(tmp_path / "mmdet.pth"), str(tmp_path / "ours.pth")
    try:
        state = mmdet_state_dict_of(condinst)
        torch.save({"meta": {"hub": MessageHubLike()}, "state_dict": state}, source)
    finally:
        del sys.modules[module.__name__]
        MessageHubLike.__module__ = __name__
    convert_main(["mmdet", source, target])

    fresh = build_model(mmdet_config()).eval()
    DetectionCheckpointer(fresh).load(target)
    for key, value in condinst.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_export_refuses_mmdetection_postprocessing(condinst):
    """The traced decoding is AdelaiDet's: exporting with mmdetection's keys would change the
    detections silently."""
    with pytest.raises(ValueError, match="MODEL.FCOS.PRE_NMS_RANK_WITH_CTR"):
        TraceableCondInst(condinst)
