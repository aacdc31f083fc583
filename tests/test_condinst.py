"""CondInst: mask head math, parameter layout, checkpoint compatibility, train/eval passes."""

import os

import pytest
import torch
import torch.nn.functional as F
import yaml
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage

from iuq_d2.engine.config_loader import get_config, load_config
from iuq_d2.layers import aligned_bilinear, dice_loss, dynamic_mlp, parse_dynamic_params
from iuq_d2.modeling.fcos.targets import compute_locations

from .conftest import make_input, tiny_config

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference")
REFERENCE = os.environ.get("IUQ_D2_REFERENCE", REFERENCE)
BUNDLED = os.path.join(os.path.dirname(__file__), "data")


def _reference_table(name):
    """(key -> (shape, dtype)) from the AdelaiDet state_dict listing."""
    path = os.path.join(BUNDLED, name)
    table = {}
    with open(path) as f:
        next(f)
        for line in f:
            key, shape, dtype = line.rstrip("\n").split("\t")
            dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
            table[key] = (dims, dtype)
    return table


def _our_table(cfg):
    model = build_model(cfg)
    return {
        k: (tuple(v.shape), str(v.dtype).replace("torch.", ""))
        for k, v in model.state_dict().items()
    }


def _adelaidet_r50_config():
    """Our configs/CondInst/MS_R_50_1x.yaml with the two overrides AdelaiDet's reference data
    was made with (CPU, no weights)."""
    cfg = load_config(
        os.path.join(os.path.dirname(__file__), "..", "configs", "CondInst", "MS_R_50_1x.yaml"),
        freeze=False,
    )
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.mark.parametrize(
    "listing,semantic",
    [
        ("adelaidet_condinst_R50_state_dict.tsv", False),
        ("adelaidet_condinst_R50_sem_state_dict.tsv", True),
    ],
)
def test_state_dict_matches_adelaidet(listing, semantic):
    cfg = _adelaidet_r50_config()
    cfg.MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON = semantic
    ours = _our_table(cfg)
    theirs = _reference_table(listing)
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    mismatched = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert mismatched == {}


def _mismatches(theirs: dict, ours, prefix: str = ""):
    """Keys of the AdelaiDet dump (subtrees or values) whose value differs in ours, or which
    ours lacks (value None)."""
    out = {}
    for key, value in theirs.items():
        name = prefix + key
        if key not in ours:
            out[name] = None
            continue
        if isinstance(value, dict):
            out.update(_mismatches(value, ours[key], name + "."))
        elif (list(ours[key]) if isinstance(ours[key], tuple) else ours[key]) != value:
            out[name] = (ours[key], value)
    return out


def test_merged_config_matches_adelaidet():
    """Every value AdelaiDet's MS_R_50_1x.yaml ends with is ours too (defaults + _BASE_ chain)."""
    cfg = _adelaidet_r50_config()
    with open(os.path.join(BUNDLED, "adelaidet_condinst_R50_config.yaml")) as f:
        theirs = yaml.safe_load(f)
    assert _mismatches(theirs, cfg) == {}
    assert cfg.MODEL.FCOS.THRESH_WITH_CTR is True


def test_adelaidet_dumped_config_loads():
    """The config.yaml an AdelaiDet run writes (every key it knows) loads, for --eval-only on
    its checkpoint."""
    cfg = load_config(os.path.join(BUNDLED, "adelaidet_condinst_R50_config.yaml"))
    assert cfg.MODEL.BOXINST.ENABLED is False
    assert cfg.INPUT.HFLIP_TRAIN is True


@pytest.mark.parametrize(
    "key,value",
    [
        ("MODEL.CONDINST.BOTTOM_PIXELS_REMOVED", 10),
        ("MODEL.CONDINST.MASK_HEAD.USE_FP16", True),
        ("MODEL.FCOS.LOSS_NORMALIZER_CLS", "moving_fg"),
        ("MODEL.FCOS.YIELD_PROPOSAL", True),
        ("MODEL.BACKBONE.ANTI_ALIAS", True),
        ("INPUT.IS_ROTATE", True),
    ],
)
def test_adelaidet_features_we_lack_are_refused(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(None, [key, str(value)])


def test_adelaidet_crop_and_deform_keys_matter_only_when_their_feature_is_on():
    load_config(None, ["INPUT.CROP.CROP_INSTANCE", "True", "MODEL.RESNETS.DEFORM_INTERVAL", "2"])
    with pytest.raises(ValueError, match="INPUT.CROP.CROP_INSTANCE=True .* INPUT.CROP.ENABLED"):
        load_config(None, ["INPUT.CROP.ENABLED", "True"])
    load_config(None, ["INPUT.CROP.ENABLED", "True", "INPUT.CROP.CROP_INSTANCE", "False"])
    deform = ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]"]
    with pytest.raises(ValueError, match="DEFORM_INTERVAL=2"):
        load_config(None, deform + ["MODEL.RESNETS.DEFORM_INTERVAL", "2"])


def test_controller_emits_169_parameters_for_default_head():
    cfg = get_config()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    model = build_model(cfg)
    # (8 + 2) * 8 + 8, 8 * 8 + 8, 8 * 1 + 1
    assert model.mask_head.num_params == 169
    assert model.controller.out_channels == 169


def test_dynamic_mlp_equals_per_instance_convolutions():
    torch.manual_seed(0)
    shapes = [(8, 10), (8, 8), (1, 8)]
    params = torch.randn(3, sum(o * i + o for o, i in shapes))
    x = torch.randn(3, 10, 5, 7)
    weights, biases = parse_dynamic_params(params, shapes)
    got = dynamic_mlp(x.flatten(2), weights, biases).reshape(3, 1, 5, 7)
    for q in range(3):
        # Explicit layout: all weights first (layer by layer, [out, in] row-major), then biases.
        offset = 0
        ws, bs = [], []
        for o, i in shapes:
            ws.append(params[q, offset : offset + o * i].reshape(o, i, 1, 1))
            offset += o * i
        for o, _ in shapes:
            bs.append(params[q, offset : offset + o])
            offset += o
        y = x[q : q + 1]
        for layer, (w, b) in enumerate(zip(ws, bs)):
            y = F.conv2d(y, w, b)
            if layer < 2:
                y = F.relu(y)
        torch.testing.assert_close(got[q : q + 1], y, rtol=1e-5, atol=1e-5)


def test_mask_head_relative_coordinates(tiny_cfg):
    """With all weights zero but those reading the x coordinate, the logit at a pixel is the
    pixel's relative x coordinate: (query x - pixel x) / size of interest of the query's level."""
    model = build_model(tiny_cfg)
    head = model.mask_head
    c = head.in_channels
    params = torch.zeros(1, head.num_params)
    w0, w1 = 8 * (c + 2), 8 * 8
    # layer 0, output 0 reads input 0 (rel x); layers 1 and 2 pass output 0 through.
    params[0, 0] = 1.0
    params[0, w0] = 1.0
    params[0, w0 + w1] = 1.0
    queries = Instances((0, 0))
    queries.mask_head_params = params
    queries.locations = torch.tensor([[100.0, 36.0]])
    queries.fpn_levels = torch.tensor([1])
    queries.im_inds = torch.tensor([0])
    feats = torch.randn(1, c, 4, 16)
    logits = head(feats, 8, queries)  # stride 8 -> 4: [1, 1, 8, 32]
    soi = float(head.sizes_of_interest[1])
    pixels = compute_locations(4, 16, 8, torch.device("cpu"))
    expected = ((100.0 - pixels[:, 0]) / soi).clamp(min=0).reshape(1, 1, 4, 16)
    torch.testing.assert_close(logits[:, :, 1::2, 1::2], expected)


def test_aligned_bilinear_places_samples_and_is_identity_for_factor_one():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(aligned_bilinear(x, 1), x)
    y = aligned_bilinear(x, 4)
    assert y.shape == (2, 3, 16, 20)
    torch.testing.assert_close(y[:, :, 2::4, 2::4], x)
    with pytest.raises(ValueError, match="positive integer"):
        aligned_bilinear(x, 0)


def test_dice_loss_by_hand():
    probs = torch.tensor([[0.5, 1.0, 0.0, 0.25]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    inter = 0.5 + 1.0
    union = (0.25 + 1.0 + 0.0625) + 2.0
    assert dice_loss(probs, target).item() == pytest.approx(1 - 2 * inter / (union + 1e-5))


def _batch():
    return [
        make_input(96, 128, [[10, 12, 60, 70], [50, 40, 120, 90]], [0, 2], seed=1),
        make_input(112, 80, [[5, 5, 30, 40]], [1], seed=2),
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"MODEL.CONDINST.MAX_PROPOSALS": 5},
        {"MODEL.CONDINST.MAX_PROPOSALS": -1, "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM": 4},
        {"MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON": True},
    ],
)
def test_forward_backward_reaches_every_parameter(overrides):
    torch.manual_seed(0)
    model = build_model(tiny_config(**overrides))
    losses = model(_batch())
    expected = {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"}
    if overrides.get("MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON"):
        expected.add("loss_sem")
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_topk_proposals_per_image_are_spread_over_instances():
    torch.manual_seed(0)
    model = build_model(
        tiny_config(
            **{"MODEL.CONDINST.MAX_PROPOSALS": -1, "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM": 4}
        )
    )
    batch = _batch()
    images = model.preprocess_image(batch)
    gt = model.prepare_targets(batch, images)
    features = model.backbone(images.tensor)
    positives, _ = model.proposal_generator(images, features, gt, model.controller)
    queries = model.sample_queries(positives, gt)
    # image 0 has 2 instances -> 2 per instance; image 1 has 1 -> 4.
    for gt_ind, limit in [(0, 2), (1, 2), (2, 4)]:
        available = int((positives.gt_inds == gt_ind).sum())
        assert int((queries.gt_inds == gt_ind).sum()) == min(limit, available)


def test_training_with_only_empty_images_gives_zero_mask_loss_and_gradients():
    model = build_model(tiny_config())
    batch = [make_input(96, 128, [], [], seed=3), make_input(128, 96, [], [], seed=4)]
    losses = model(batch)
    assert losses["loss_mask"].item() == 0.0
    assert losses["loss_fcos_loc"].item() == 0.0
    sum(losses.values()).backward()
    assert model.controller.weight.grad is not None


def test_eval_outputs_have_the_requested_size():
    torch.manual_seed(0)
    cfg = tiny_config(**{"MODEL.FCOS.INFERENCE_TH_TEST": 0.0})
    model = build_model(cfg).eval()
    batch = _batch()
    batch[0]["height"], batch[0]["width"] = 192, 256  # the original was twice as large
    with torch.no_grad():
        outputs = model(batch)
    first = outputs[0]["instances"]
    assert len(first) > 0
    assert first.pred_masks.shape[1:] == (192, 256)
    assert first.pred_masks.dtype == torch.bool
    assert first.image_size == (192, 256)
    assert (first.pred_boxes.tensor[:, 2] <= 256).all() and (
        first.pred_boxes.tensor[:, 3] <= 192
    ).all()
    assert len(first) <= cfg.MODEL.FCOS.POST_NMS_TOPK_TEST
    assert outputs[1]["instances"].pred_masks.shape[1:] == (112, 80)


def test_eval_with_no_detections():
    model = build_model(tiny_config(**{"MODEL.FCOS.INFERENCE_TH_TEST": 1.1})).eval()
    with torch.no_grad():
        out = model(_batch())
    assert len(out[0]["instances"]) == 0
    assert out[0]["instances"].pred_masks.shape == (0, 96, 128)


def test_bad_configs_name_the_key():
    with pytest.raises(ValueError, match="TOPK_PROPOSALS_PER_IM"):
        build_model(
            tiny_config(
                **{"MODEL.CONDINST.MAX_PROPOSALS": 10, "MODEL.CONDINST.TOPK_PROPOSALS_PER_IM": 10}
            )
        )
    with pytest.raises(ValueError, match="FPN_STRIDES"):
        build_model(tiny_config(**{"MODEL.FCOS.FPN_STRIDES": [8, 16, 32, 64]}))
    with pytest.raises(ValueError, match="USE_DEFORMABLE"):
        build_model(tiny_config(**{"MODEL.FCOS.USE_DEFORMABLE": True}))


def test_cpu_autocast_keeps_losses_float32():
    """The losses are computed in float32 even when the network runs in reduced precision."""
    torch.manual_seed(0)
    model = build_model(tiny_config())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(_batch())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def _double_batch():
    batch = _batch()
    for x in batch:
        x["image"] = x["image"].double()
    return batch


@pytest.mark.parametrize("arch", ["CondInst", "IUQCondInst"])
def test_channels_last_gives_the_same_losses_gradients_and_detections(arch):
    """MODEL.CONDINST.CHANNELS_LAST changes the memory layout only, never the math. In float64:
    in float32 the different summation orders of the layouts, amplified through the BatchNorm
    layers of a freshly initialised model, move some backbone gradients by ~2%."""
    models = {}
    for last in (False, True):
        torch.manual_seed(0)
        cfg = tiny_config(
            **{
                "MODEL.META_ARCHITECTURE": arch,
                "MODEL.CONDINST.CHANNELS_LAST": last,
                "MODEL.FCOS.INFERENCE_TH_TEST": 0.0,
            }
        )
        cfg.MODEL.IUQ.EQUI.ENABLED = False
        models[last] = build_model(cfg).double()
    models[True].load_state_dict(models[False].state_dict())
    assert models[True].backbone.bottom_up.stem.conv1.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    losses, grads = {}, {}
    for last, model in models.items():
        torch.manual_seed(1)
        with EventStorage():  # IUQCondInst logs its diagnostics
            losses[last] = model(_double_batch())
        sum(losses[last].values()).backward()
        grads[last] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(losses[False]) == set(losses[True])
    for name, value in losses[False].items():
        torch.testing.assert_close(losses[True][name], value, rtol=1e-9, atol=1e-12, msg=name)
    assert grads[False].keys() == grads[True].keys()
    for name, grad in grads[False].items():
        error = (grads[True][name] - grad).norm()
        assert error <= 1e-6 * grad.norm() + 1e-12, (name, float(error), float(grad.norm()))

    outputs = {}
    for last, model in models.items():  # inference in float32, as it runs
        model.float().eval()
        with torch.no_grad():
            outputs[last] = model(_batch())[0]["instances"]
    assert len(outputs[True]) == len(outputs[False]) > 0
    torch.testing.assert_close(outputs[True].scores, outputs[False].scores, rtol=1e-4, atol=1e-6)
    assert (outputs[True].pred_masks != outputs[False].pred_masks).float().mean() < 1e-3
