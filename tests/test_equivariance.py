"""IUQCondInst's equivariance losses, on batches with hand-made views."""

import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from iuq_d2.modeling.iuq.equivariance import view_inputs

from .conftest import make_input, tiny_config


def equi_config(**overrides):
    return tiny_config(
        **{
            "MODEL.META_ARCHITECTURE": "IUQCondInst",
            "MODEL.IUQ.INTER.ENABLED": False,
            "MODEL.IUQ.EQUI.ENABLED": True,
            "MODEL.CONDINST.MAX_PROPOSALS": -1,
            "MODEL.IUQ.EQUI.FEAT_LOSS_WEIGHT": 1.0,
            **overrides,
        }
    )


def _with_identity_views(batch):
    for x in batch:
        x["view"] = {
            "image": x["image"].clone(),
            "instances": copy.deepcopy(x["instances"]),
            "affine": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        }
    return batch


def _batch():
    # Equal sizes, multiples of 32: no padding, so every cell of a view has a counterpart.
    return _with_identity_views(
        [
            make_input(96, 96, [[10, 12, 60, 70], [50, 40, 90, 90]], [0, 2], seed=1),
            make_input(96, 96, [[5, 5, 30, 40]], [1], seed=2),
        ]
    )


def _train_parts(model, batch):
    inputs = batch + view_inputs(batch)
    images = model.preprocess_image(inputs)
    gt = model.prepare_targets(inputs, images)
    return images, gt, model.forward_train(images, gt)


def test_identity_view_gives_the_intra_scene_dice_of_the_view_queries():
    torch.manual_seed(0)
    model = build_model(equi_config(**{"MODEL.IUQ.EQUI.QUERY_LOSS_WEIGHT": 1.0}))
    batch = _batch()
    images, gt, outputs = _train_parts(model, batch)
    losses = model.equivariance(outputs, images, gt, batch, model.mask_loss)
    n = len(batch)
    view_queries = outputs.queries[outputs.queries.im_inds >= n]
    assert len(view_queries) > 0
    # The originals' own dice on the same (view) positives: identical images give identical F.
    view_queries.im_inds = view_queries.im_inds - n
    view_queries.gt_inds = view_queries.gt_inds - sum(len(g) for g in gt[:n])
    intra = model.mask_loss(outputs.mask_feats[:n], view_queries, gt[n:])
    torch.testing.assert_close(losses["loss_equi_query"], intra)
    assert losses["loss_equi_feat"].item() == 0.0


def test_gradients_reach_view_queries_and_original_representation():
    torch.manual_seed(0)
    model = build_model(equi_config())
    batch = _batch()
    images, gt, outputs = _train_parts(model, batch)
    outputs.mask_feats.retain_grad()
    outputs.queries.mask_head_params.retain_grad()
    losses = model.equivariance(outputs, images, gt, batch, model.mask_loss)
    losses["loss_equi_query"].backward(retain_graph=True)
    n = len(batch)
    feat_grad = outputs.mask_feats.grad
    assert feat_grad[:n].abs().sum() > 0  # g(F(I)) is read from the original pass
    assert feat_grad[n:].abs().sum() == 0  # F(g(I)) is not used by this term
    param_grad = outputs.queries.mask_head_params.grad
    in_view = outputs.queries.im_inds >= n
    assert param_grad[in_view].abs().sum() > 0 and param_grad[~in_view].abs().sum() == 0


def test_representation_loss_sees_both_sides():
    torch.manual_seed(0)
    model = build_model(equi_config())
    batch = _batch()
    batch[1]["view"]["image"] = torch.flip(batch[1]["image"], dims=[2])
    batch[1]["view"]["affine"] = torch.tensor([-1.0, 96.0, 1.0, 0.0])
    inst = batch[1]["view"]["instances"]
    boxes = inst.gt_boxes.tensor.clone()
    inst.gt_boxes.tensor[:, 0], inst.gt_boxes.tensor[:, 2] = 96 - boxes[:, 2], 96 - boxes[:, 0]
    inst.gt_masks = inst.gt_masks.__class__(
        [[p.copy() for p in poly] for poly in inst.gt_masks.polygons]
    )
    for poly in inst.gt_masks.polygons:
        for p in poly:
            p[0::2] = 96 - p[0::2]
    images, gt, outputs = _train_parts(model, batch)
    outputs.mask_feats.retain_grad()
    losses = model.equivariance(outputs, images, gt, batch, model.mask_loss)
    assert losses["loss_equi_feat"].item() > 0
    losses["loss_equi_feat"].backward()
    grad = outputs.mask_feats.grad
    assert grad[1].abs().sum() > 0 and grad[3].abs().sum() > 0  # original and its flipped view
    assert (
        grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    )  # identity pair: F(g(I)) == g(F(I))


def test_views_with_every_instance_cropped_away():
    torch.manual_seed(0)
    model = build_model(
        equi_config(**{"MODEL.IUQ.INTER.ENABLED": True, "MODEL.IUQ.INTER.BANK_SIZE": 100})
    )
    batch = _batch()
    for x in batch:
        x["view"]["instances"] = x["view"]["instances"][[]]
    with EventStorage():
        losses = model(batch)
    assert losses["loss_equi_query"].item() == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_missing_view_is_a_clear_error():
    model = build_model(equi_config())
    batch = _batch()
    del batch[0]["view"]
    with pytest.raises(KeyError, match="INPUT.DATASET_MAPPER_NAME"):
        model(batch)


def test_bad_mode_names_the_key():
    with pytest.raises(ValueError, match="MODEL.IUQ.EQUI.MODE"):
        build_model(equi_config(**{"MODEL.IUQ.EQUI.MODE": "both"}))
