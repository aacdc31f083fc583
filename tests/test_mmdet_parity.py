"""A converted mmdetection CondInst computes in iuq_d2 what it computes in mmdetection.

mmdetection 3.3.0's own R-50 CondInst (its shipped config) gets random weights, every parameter
and BN statistic drawn from a fixed seed; ``python -m iuq_d2.convert mmdet`` converts them and
our model runs configs/CondInst/mmdet_R_50_ms_poly_90k.yaml. On two images, one whose sides are
not multiples of 32, the stages must agree to float32 rounding: P3-P7, each level's class, box,
centerness and controller outputs, the mask features, the mask logits of the detections, and the
final detections (boxes, scores, classes, masks). The final detections go through detectron2's
DefaultPredictor, so the BGR->RGB flip (INPUT.FORMAT) and the checkpoint loading are the user's.

Needs the .mmdet-stack folder (``make mmdet-stack``, part of ``make test``): skips without it,
fails instead with IUQ_REQUIRE_MMDET=1.
"""

import math
import os
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from detectron2.engine import DefaultPredictor
from torch import nn

from iuq_d2.convert.__main__ import main as convert_main
from iuq_d2.engine.config_loader import load_config

from . import mmdet_stack
from .conftest import REPO

CONFIG = os.path.join(REPO, "configs", "CondInst", "mmdet_R_50_ms_poly_90k.yaml")
LEVELS = ["p3", "p4", "p5", "p6", "p7"]
STRIDES = [8, 16, 32, 64, 128]
# (height, width): the first a multiple of 32, the second not (it is padded to 288 x 416).
IMAGE_SIZES = [(320, 416), (283, 397)]
SEED = 0


def randomise(model: nn.Module, seed: int) -> None:
    """Draw every parameter and buffer of ``model`` from ``seed``: convolutions with std
    1/sqrt(fan in), which keeps activations in range through 50 layers, norm weights in
    [0.5, 1.5), biases and running means around 0, running variances in [0.5, 1.5).

    The class and centerness predictors are drawn wider, with class logits around the 0.05
    threshold, so that the threshold, both top-k cuts and the score formula all change which
    detections come out: each post-processing key is then visible in the result."""
    g = torch.Generator().manual_seed(seed)

    def draw(shape, kind: str) -> torch.Tensor:
        if kind == "normal":
            return torch.randn(shape, generator=g)
        return torch.rand(shape, generator=g)

    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(int(torch.randint(1, 1000, (), generator=g)))
            elif t.dim() == 4:
                t.copy_(draw(t.shape, "normal") / math.sqrt(t[0].numel()))
            elif name.endswith(("running_var", "weight", "scale")):
                t.copy_(draw(t.shape, "uniform") + 0.5)
            else:
                t.copy_(draw(t.shape, "normal") * 0.1)
        head = model.bbox_head
        head.conv_cls.weight.mul_(2.0)
        head.conv_cls.bias.add_(-3.0)
        head.conv_centerness.weight.mul_(3.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Tuple[nn.Module, DefaultPredictor]:
    """mmdetection's CondInst with random weights, and our predictor on its conversion, made by
    the command line from a checkpoint file in mmdetection's layout."""
    mm = mmdet_stack.build_mmdet_condinst()
    randomise(mm, SEED)
    folder = tmp_path_factory.mktemp("mmdet")
    source, converted = str(folder / "mmdet.pth"), str(folder / "converted.pth")
    torch.save({"meta": {"seed": SEED}, "state_dict": mm.state_dict()}, source)
    convert_main(["mmdet", source, converted])
    cfg = load_config(
        CONFIG,
        # No test-time resize: both sides see the images as they are.
        ["MODEL.WEIGHTS", converted, "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "0"],
    )
    predictor = DefaultPredictor(cfg)
    loaded = torch.load(converted, weights_only=True)["model"]
    ours = predictor.model.state_dict()
    assert sorted(ours) == sorted(loaded), "the converted checkpoint must hold exactly our keys"
    for key, value in loaded.items():
        # detectron2 skips a tensor of another shape with a warning: catch that here.
        assert torch.equal(ours[key], value), f"{key} did not load"
    return mm, predictor


def bgr_images() -> List[np.ndarray]:
    g = torch.Generator().manual_seed(SEED + 1)
    return [
        torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        for h, w in IMAGE_SIZES
    ]


def mmdet_batch(mm: nn.Module, images: List[np.ndarray]) -> Dict:
    """mmdetection's data preprocessor on BGR images, as its test pipeline hands them over
    (no resize): BGR->RGB, mean/std normalisation, padding to 32."""
    from mmdet.structures import DetDataSample

    inputs = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in images]
    samples = [
        DetDataSample(
            metainfo=dict(img_shape=im.shape[:2], ori_shape=im.shape[:2], scale_factor=(1.0, 1.0))
        )
        for im in images
    ]
    return mm.data_preprocessor({"inputs": inputs, "data_samples": samples}, False)


def our_inputs(images: List[np.ndarray]) -> List[Dict]:
    """Our model's inputs: the images in INPUT.FORMAT (RGB), as the dataset mapper gives them."""
    return [
        {"image": torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1).float()} for im in images
    ]


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """Equal up to float32 rounding, relative to the tensor's scale."""
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    scale = theirs.abs().max().clamp(min=1.0)
    torch.testing.assert_close(
        ours, theirs, rtol=1e-5, atol=1e-5 * float(scale), msg=lambda m: f"{what}: {m}"
    )


def test_features_and_head_outputs(models):
    """P3-P7, per level the class logits, box distances, centerness and controller output, and
    the mask features, on a batch of both images."""
    mm, predictor = models
    ours = predictor.model
    images = bgr_images()
    with torch.no_grad():
        batch = mmdet_batch(mm, images)
        padded = our_inputs(images)
        image_list = ours.preprocess_image(padded)
        assert_close(image_list.tensor, batch["inputs"], "normalised, padded input")

        x = mm.extract_feat(batch["inputs"])
        features = ours.backbone(image_list.tensor)
        for name, theirs in zip(LEVELS, x):
            assert_close(features[name], theirs, name)

        cls_scores, bbox_preds, centernesses, param_preds = mm.bbox_head(x)
        logits, bbox_reg, ctrness, towers = ours.proposal_generator.fcos_head(
            [features[f] for f in LEVELS]
        )
        for level, stride in enumerate(STRIDES):
            name = LEVELS[level]
            assert_close(logits[level], cls_scores[level], f"{name} class logits")
            # mmdetection's eval-mode box output is already in pixels.
            assert_close(bbox_reg[level] * stride, bbox_preds[level], f"{name} box distances")
            assert_close(ctrness[level], centernesses[level], f"{name} centerness")
            assert_close(ours.controller(towers[level]), param_preds[level], f"{name} controller")

        mask_feats, _ = ours.mask_branch(features)
        assert_close(mask_feats, mm.mask_head.mask_feature_head(x), "mask features")


def test_mask_logits(models):
    """The dynamic mask head's logits (stride 4) of each image's detections, on the batch."""
    mm, predictor = models
    ours = predictor.model
    images = bgr_images()
    with torch.no_grad():
        batch = mmdet_batch(mm, images)
        x = mm.extract_feat(batch["inputs"])
        detections = mm.bbox_head.predict(x, batch["data_samples"], rescale=False)
        (their_logits,) = mm.mask_head(x, detections)
        our_detections, our_logits = ours.detect(ours.preprocess_image(our_inputs(images)))
    per_image = our_logits.split([len(d) for d in our_detections])
    for i, (det, theirs, mine) in enumerate(zip(detections, their_logits, per_image)):
        assert len(det) > 0
        assert_close(our_detections[i].pred_boxes.tensor, det.bboxes, f"image {i} boxes")
        assert_close(mine[:, 0], theirs, f"image {i} mask logits")


def assert_same_detections(ours, theirs, what: str) -> None:
    """Same count and scores (both come by decreasing score); the same boxes and classes for all
    but a group tied with the last score kept, of which either side may keep any members."""
    assert len(ours) == len(theirs), f"{what}: {len(ours)} detections, mmdetection {len(theirs)}"
    assert len(theirs) > 0, f"{what}: no detections to compare"
    assert_close(ours.scores, theirs.scores, f"{what}: scores")
    tied = int((theirs.scores == theirs.scores[-1]).sum())
    n = len(theirs) if tied == 1 else len(theirs) - tied
    assert torch.equal(ours.pred_classes[:n], theirs.labels[:n]), f"{what}: classes"
    assert_close(ours.pred_boxes.tensor[:n], theirs.bboxes[:n], f"{what}: boxes")


@pytest.mark.parametrize("index", range(len(IMAGE_SIZES)))
def test_detections(models, index):
    """Boxes, scores, classes and masks of one image: mmdetection's predict against detectron2's
    DefaultPredictor (BGR in, INPUT.FORMAT RGB) on our converted checkpoint."""
    mm, predictor = models
    image = bgr_images()[index]
    with torch.no_grad():
        batch = mmdet_batch(mm, [image])
        theirs = mm.predict(batch["inputs"], batch["data_samples"], rescale=True)[0]
        theirs = theirs.pred_instances
        ours = predictor(image)["instances"]
    assert_same_detections(ours, theirs, f"image {index}")
    # The two mask heads round differently (up to ~1e-6 of a logit's scale, see
    # test_mask_logits): a pixel whose probability is that close to 0.5 may fall either side.
    differ = int((ours.pred_masks != theirs.masks).sum())
    assert differ <= max(1, ours.pred_masks.numel() // 1_000_000), f"{differ} mask pixels differ"


# Hand-made head outputs for one 100 x 150 image (padded to 128 x 160), per level (H, W).
CRAFTED_IMAGE = (100, 150)
CRAFTED_LEVELS = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
CLASSES_PER_LEVEL = 16


def crafted_head_outputs(case: str):
    """Class logits, box distances (pixels), centerness logits and controller outputs where the
    random network's dense scores do not reach: a few chosen (location, class) entries over a
    background far below the threshold. Each entry sits inside the image, its box inside its
    cell, and each level has classes of its own, so NMS removes nothing and every difference is
    the threshold's or the final cut's.

    "threshold": 40 entries with class scores in (0.06, 0.3) and random centerness, so that
    thresholding class x centerness would drop some. "ties": 99 entries above 3 that tie (one
    location, three classes) across the 100th place, and 20 below."""
    g = torch.Generator().manual_seed(SEED + 2)
    logits, distances, ctrness, params = [], [], [], []
    for level, (h, w) in enumerate(CRAFTED_LEVELS):
        stride = STRIDES[level]
        logits.append(torch.full((1, 80, h, w), -10.0))
        distances.append(torch.rand((1, 4, h, w), generator=g) * 0.45 * stride)
        ctrness.append(torch.randn((1, 1, h, w), generator=g) * 2.0)
        params.append(torch.randn((1, 169, h, w), generator=g))
    # Every (level, y, x) inside the image, in random order.
    inside = [
        (level, y, x)
        for level, (h, w) in enumerate(CRAFTED_LEVELS)
        for y in range(h)
        for x in range(w)
        if (y + 0.5) * STRIDES[level] < CRAFTED_IMAGE[0]
        and (x + 0.5) * STRIDES[level] < CRAFTED_IMAGE[1]
    ]
    order = torch.randperm(len(inside), generator=g).tolist()
    spots = [inside[i] for i in order]

    def set_entry(spot, cls_in_level: int, logit: float) -> None:
        level, y, x = spot
        logits[level][0, level * CLASSES_PER_LEVEL + cls_in_level, y, x] = logit

    if case == "threshold":
        for spot in spots[:40]:
            p = 0.06 + 0.24 * float(torch.rand((), generator=g))
            set_entry(
                spot, int(torch.randint(CLASSES_PER_LEVEL, (), generator=g)), math.log(p / (1 - p))
            )
    else:
        for level, y, x in spots[:123]:
            ctrness[level][0, 0, y, x] = 0.0
        for i, spot in enumerate(spots[:99]):
            set_entry(spot, 0, 2.0 + 2.0 * i / 99)
        for k in range(3):
            set_entry(spots[99], 1 + k, 1.5)
        for i, spot in enumerate(spots[100:120]):
            set_entry(spot, 0, -1.0 + i / 20)
    return logits, distances, ctrness, params


@pytest.mark.parametrize("case", ["threshold", "ties"])
def test_postprocessing_crafted(models, case):
    """FCOS post-processing alone on hand-made head outputs: the threshold on the class score
    alone and the hard top-100 cut, which the random network's dense scores leave unseen."""
    from detectron2.structures import Instances

    from iuq_d2.modeling.fcos.targets import compute_locations

    mm, predictor = models
    fcos = predictor.model.proposal_generator
    logits, distances, ctrness, params = crafted_head_outputs(case)
    meta = {"img_shape": CRAFTED_IMAGE, "scale_factor": (1.0, 1.0)}
    with torch.no_grad():
        theirs = mm.bbox_head.predict_by_feat(
            logits, distances, ctrness, params, batch_img_metas=[meta], rescale=False
        )[0]
        locations = [
            compute_locations(h, w, s, torch.device("cpu"))
            for (h, w), s in zip(CRAFTED_LEVELS, STRIDES)
        ]
        regression = [d / s for d, s in zip(distances, STRIDES)]
        ours = fcos.predict(logits, regression, ctrness, params, locations, [CRAFTED_IMAGE])[0]
    assert isinstance(ours, Instances)
    expected = {"threshold": 40, "ties": 100}[case]
    assert len(theirs) == expected, "the crafted case no longer tests what it should"
    assert_same_detections(ours, theirs, case)


def test_test_time_image_loading_and_resize(tmp_path):
    """mmdetection's test pipeline (its config: Pillow decoding, Resize to (1333, 800) with
    Pillow) and ours (detectron2's read_image, ResizeShortestEdge from INPUT.MIN_SIZE_TEST and
    MAX_SIZE_TEST) give the same pixels, so evaluation at full size sees the same input."""
    import cv2
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image

    mmdet = mmdet_stack.import_mmdet()
    from mmdet.registry import TRANSFORMS
    from mmengine.config import Config

    configs = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs")
    pipeline = Config.fromfile(os.path.join(configs, mmdet_stack.CONDINST_CONFIG)).test_pipeline
    steps = [TRANSFORMS.build(t) for t in pipeline if t["type"] in ("LoadImageFromFile", "Resize")]
    assert len(steps) == 2
    cfg = load_config(CONFIG, ["MODEL.DEVICE", "cpu"])
    resize = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    g = torch.Generator().manual_seed(SEED + 3)
    for h, w in [*IMAGE_SIZES, (427, 640), (500, 1500)]:
        path = str(tmp_path / f"{h}x{w}.jpg")
        cv2.imwrite(path, torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy())
        results = {"img_path": path}
        for step in steps:
            results = step(results)
        image = read_image(path, format="BGR")  # mmdetection's channel order; resize is per channel
        ours = resize.get_transform(image).apply_image(image)
        assert ours.shape == results["img"].shape, (h, w)
        assert np.array_equal(ours, results["img"]), (h, w)
