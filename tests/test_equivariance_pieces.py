"""Tests of the pieces of IUQ's equivariance: config keys, view transforms and their affine maps,
the view-producing mapper, the feature warp and the representation-equivariance loss."""

import copy

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.structures import BoxMode, ImageList, PolygonMasks

from iuq_d2.config import add_condinst_config, add_iuq_config
from iuq_d2.data.iuq_mapper import IUQDatasetMapper
from iuq_d2.data.mapper import CondInstDatasetMapper
from iuq_d2.data.view_alignment import backbone_output_shapes, view_alignment
from iuq_d2.data.views import sample_view_transforms, transform_to_affine
from iuq_d2.layers.equivariance import feature_equivariance_loss
from iuq_d2.layers.warp import warp_to_view

from .conftest import set_keys

STRIDE = 8


def make_cfg(**overrides):
    cfg = get_cfg()
    add_condinst_config(cfg)
    add_iuq_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 256
    return set_keys(cfg, overrides)


def rect_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def polygon_bbox(polygons):
    points = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polygons])
    return [*points.min(axis=0), *points.max(axis=0)]


def make_annotation(polygons, category_id, iscrowd=0):
    x0, y0, x1, y1 = polygon_bbox(polygons)
    return {
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "segmentation": polygons,
        "category_id": category_id,
        "iscrowd": iscrowd,
    }


@pytest.fixture(scope="module")
def image_dict(tmp_path_factory):
    """A 150 x 190 image with a crowd region, rectangles, a triangle and a ring-like shape
    whose box is larger than its parts."""
    path = str(tmp_path_factory.mktemp("equi") / "image.png")
    rng = np.random.RandomState(0)
    cv2.imwrite(path, rng.randint(0, 256, (150, 190, 3), dtype=np.uint8))
    annotations = [
        make_annotation(rect_polygon(5, 5, 60, 50), 0),
        make_annotation(rect_polygon(100, 90, 180, 145), 1),
        make_annotation(rect_polygon(0, 0, 20, 20), 2, iscrowd=1),
        make_annotation([[70, 10, 130, 10, 100, 70]], 2),
        make_annotation(rect_polygon(10, 100, 40, 110) + rect_polygon(10, 130, 40, 140), 3),
        make_annotation(rect_polygon(150, 5, 185, 40), 1),
    ]
    return {
        "file_name": path,
        "height": 150,
        "width": 190,
        "image_id": 7,
        "annotations": annotations,
    }


def test_sampled_views_are_aligned():
    np.random.seed(0)
    flips, factors = set(), set()
    for _ in range(200):
        h, w = np.random.randint(20, 300, size=2)
        g = sample_view_transforms((h, w), (0.6, 1.0), (0.75, 1.0, 1.25), 0.5)
        crop, *rest = g.transforms
        assert isinstance(crop, T.CropTransform)
        # Offsets are multiples of the stride, sides one more (cell centres map onto centres).
        assert crop.x0 % STRIDE == 0 and crop.y0 % STRIDE == 0
        assert crop.w % STRIDE == 1 and crop.h % STRIDE == 1
        assert crop.y0 + crop.h <= h and crop.x0 + crop.w <= w
        for side, full in ((crop.h, h), (crop.w, w)):
            cells = (full - 1) // STRIDE
            assert side == STRIDE + 1 or 0.6 * cells - 0.5 <= (side - 1) / STRIDE <= cells
        flip = any(isinstance(t, T.HFlipTransform) for t in rest)
        flips.add(flip)
        resize = [t for t in rest if isinstance(t, T.ResizeTransform)]
        factors.add(round(resize[0].new_w / crop.w, 1) if resize else 1.0)
        if flip:
            assert isinstance(rest[0], T.HFlipTransform) and rest[0].width == crop.w
        assert len(rest) == flip + len(resize)
    assert flips == {True, False} and {0.8, 1.0, 1.2} <= factors
    with pytest.raises(ValueError, match="aligned to 8"):
        sample_view_transforms((8, 100), (0.6, 1.0), (1.0,), 0.5)


def test_view_round_trip():
    """g followed by its inverse is the identity on boxes and masks within the crop."""
    np.random.seed(1)
    rng = np.random.RandomState(2)
    h, w = 133, 203
    for _ in range(20):
        g = sample_view_transforms((h, w), (0.5, 1.0), (0.75, 1.0, 1.25), 0.5)
        crop = g.transforms[0]
        inv = g.inverse()
        # Boxes inside the crop come back, and so does any point (the map is invertible).
        x0 = rng.uniform(crop.x0, crop.x0 + crop.w / 2, size=5)
        y0 = rng.uniform(crop.y0, crop.y0 + crop.h / 2, size=5)
        boxes = np.stack([x0, y0, x0 + crop.w / 3, y0 + crop.h / 3], axis=1)
        assert np.allclose(inv.apply_box(g.apply_box(boxes.copy())), boxes, atol=1e-6)
        points = rng.uniform(-50, 250, size=(10, 2))
        assert np.allclose(inv.apply_coords(g.apply_coords(points.copy())), points, atol=1e-6)
        # Polygons come back clipped to the crop.
        poly = [np.array([10.0, 20.0, 190.0, 30.0, 120.0, 125.0]).reshape(-1, 2)]
        back = inv.apply_polygons(g.apply_polygons(copy.deepcopy(poly)))
        clipped = T.CropTransform(crop.x0, crop.y0, crop.w, crop.h).apply_polygons(poly)
        clipped = [p + [crop.x0, crop.y0] for p in clipped]
        assert np.allclose(np.concatenate(back), np.concatenate(clipped), atol=1e-4)
        # Bitmasks: exact without rescale, up to the resampling at the mask border with it.
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[30:100, 40:170] = 1
        window = np.zeros_like(mask)
        window[crop.y0 : crop.y0 + crop.h, crop.x0 : crop.x0 + crop.w] = 1
        round_trip = inv.apply_segmentation(g.apply_segmentation(mask))
        assert round_trip.shape == mask.shape
        if not any(isinstance(t, T.ResizeTransform) for t in g.transforms):
            assert np.array_equal(round_trip, mask * window)
        else:
            assert np.abs(round_trip.astype(int) - mask * window).sum() <= 2 * (70 + 130)


def test_transform_to_affine_matches_apply_coords():
    rng = np.random.RandomState(3)
    h, w = 120, 160
    compositions = [
        [T.HFlipTransform(w)],
        [T.CropTransform(16, 8, 96, 80, orig_w=w, orig_h=h)],
        [T.ResizeTransform(h, w, 90, 200)],
        [T.CropTransform(16, 8, 96, 80), T.HFlipTransform(96), T.ResizeTransform(80, 96, 100, 120)],
        [
            T.ResizeTransform(h, w, 60, 80),
            T.HFlipTransform(80),
            T.VFlipTransform(60),
            T.PadTransform(3, 4, 5, 6),
            T.NoOpTransform(),
        ],
        [
            T.TransformList([T.HFlipTransform(w), T.ScaleTransform(h, w, 30, 41)]),
            T.CropTransform(5, 7, 20, 20),
        ],
    ]
    for parts in compositions:
        g = T.TransformList(parts)
        sx, tx, sy, ty = transform_to_affine(g, (h, w))
        points = rng.uniform(-20, 200, size=(50, 2))
        expected = g.apply_coords(points.copy())
        assert np.allclose(points[:, 0] * sx + tx, expected[:, 0], atol=1e-6)
        assert np.allclose(points[:, 1] * sy + ty, expected[:, 1], atol=1e-6)
    assert transform_to_affine(T.HFlipTransform(w), (h, w)) == (-1.0, float(w), 1.0, 0.0)
    rotation = T.TransformList([T.HFlipTransform(w), T.RotationTransform(h, w, 30)])
    with pytest.raises(ValueError, match="RotationTransform is not an axis-aligned"):
        transform_to_affine(rotation, (h, w))


# ---------------------------------------------------------------------------------------------
# Warp


def pad_batch(images):
    """Pad CHW images like the model does (bottom/right, to a multiple of 32)."""
    batch = ImageList.from_tensors(images, 32)
    return batch.tensor, batch.image_sizes


def toy_features(canvas):
    """A toy representation with a CNN's geometry: cell k is the pixel stride * k (a strided
    1x1 convolution), exactly equivariant to aligned crops and flips."""
    return canvas[:, :, ::STRIDE, ::STRIDE]


def hwc(image):
    return image.permute(1, 2, 0).numpy()


def chw(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def make_views(images, gs):
    """View images and affines of CHW float images under transforms ``gs``."""
    views = [chw(g.apply_image(hwc(im))) for im, g in zip(images, gs)]
    affines = torch.tensor([transform_to_affine(g, im.shape[1:]) for im, g in zip(images, gs)])
    return views, affines


def test_warp_crop_flip_is_bit_exact():
    """For aligned crop + flip, g(F(I)) is F(g(I)) bit for bit on the view's whole grid."""
    torch.manual_seed(0)
    sizes = [(133, 203), (96, 120), (150, 77)]
    images = [torch.randint(0, 256, (3, h, w)).float() for h, w in sizes]
    np.random.seed(4)
    gs = [sample_view_transforms(s, (0.5, 1.0), (1.0,), p) for s, p in zip(sizes, (1.0, 0.0, 1.0))]
    views, affines = make_views(images, gs)
    canvas, src_sizes = pad_batch(images)
    view_canvas, dst_sizes = pad_batch(views)
    view_feats = toy_features(view_canvas)
    warped, valid = warp_to_view(
        toy_features(canvas), affines, src_sizes, view_feats.shape[-2:], dst_sizes, STRIDE
    )
    assert warped.shape == view_feats.shape and valid.shape == (3, *view_feats.shape[-2:])
    for b, (hv, wv) in enumerate(dst_sizes):
        expected = torch.zeros_like(valid[b])
        expected[: -(-hv // STRIDE), : -(-wv // STRIDE)] = True  # centre pixel inside the view
        assert torch.equal(valid[b], expected)
    assert torch.equal(warped, torch.where(valid[:, None], view_feats, 0.0))
    assert feature_equivariance_loss(view_feats, warped, valid).item() == 0.0


def test_warp_exact_path_indexes_without_blending():
    """A NaN in one source cell ends up in exactly one view cell: no neighbour is blended in."""
    h, w = 64, 96
    feats = torch.randn(1, 4, h // STRIDE, w // STRIDE)
    feats[0, :, 3, 5] = float("nan")
    g = T.TransformList([T.CropTransform(16, 8, 57, 41, orig_w=w, orig_h=h), T.HFlipTransform(57)])
    affine = torch.tensor([transform_to_affine(g, (h, w))])
    warped, valid = warp_to_view(feats, affine, [(h, w)], (6, 8), [(41, 57)], STRIDE)
    assert valid.all()
    # View cell (k, l), centred on view pixel (8l, 8k), shows original pixel (16 + 56 - 8l,
    # 8 + 8k): source cell (k + 1, 9 - l).
    expected = feats[0][:, 1:7, 2:10].flip(-1)
    assert torch.equal(warped[0].nan_to_num(7.0), expected.nan_to_num(7.0))
    assert warped.isnan().any(dim=1).sum() == 1 and warped[0, :, 2, 4].isnan().all()


@pytest.mark.parametrize("factor", [0.75, 1.25, 0.5])
def test_warp_rescale_matches_smooth_image(factor):
    """With rescale the warp interpolates; on a smooth (linear) image it matches the features
    of the rescaled view up to the resampling at the image border."""
    h, w = 120, 152
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    image = torch.stack([0.7 * xs + 0.2 * ys, -0.3 * xs + 1.1 * ys, torch.full_like(xs, 3.0)])
    crop = T.CropTransform(8, 16, 136, 96, orig_w=w, orig_h=h)
    resize = T.ResizeTransform(96, 136, round(96 * factor), round(136 * factor))
    g = T.TransformList([crop, T.HFlipTransform(136), resize])
    views, affines = make_views([image], [g])
    canvas, src_sizes = pad_batch([image])
    view_canvas, dst_sizes = pad_batch(views)
    view_feats = toy_features(view_canvas)
    warped, valid = warp_to_view(
        toy_features(canvas), affines, src_sizes, view_feats.shape[-2:], dst_sizes, STRIDE
    )
    full_h, full_w = dst_sizes[0][0] // STRIDE, dst_sizes[0][1] // STRIDE
    assert valid.sum() >= 0.7 * full_h * full_w
    # The toy features of a view cell that overhangs the view's border average in padding;
    # compare where the cell lies inside the view.
    inside = valid.clone()
    inside[:, full_h:] = False
    inside[:, :, full_w:] = False
    # Away from the border, where the image resampling clamps, they match closely.
    interior = inside.clone()
    interior[:, [0, full_h - 1]] = False
    interior[:, :, [0, full_w - 1]] = False
    err = (warped - view_feats).abs().amax(dim=1)
    assert err[interior].max() < 1e-3
    assert err[inside].max() < 0.5


def test_warp_valid_mask_by_hand():
    # Source 20 x 28: cells whose centre pixel 8k lies inside: rows {0, 1, 2}, columns {0, .., 3}.
    feats = torch.arange(3 * 4, dtype=torch.float32).view(1, 1, 3, 4)
    crop = T.CropTransform(8, 0, 17, 17)  # view 17 x 17: cells {0, 1, 2} along both axes
    for g, columns in (([crop], [1, 2, 3]), ([crop, T.HFlipTransform(17)], [3, 2, 1])):
        affine = torch.tensor([transform_to_affine(T.TransformList(g), (20, 28))])
        warped, valid = warp_to_view(
            feats, affine, torch.tensor([[20, 28]]), (4, 4), [(17, 17)], STRIDE
        )
        assert valid[0].tolist() == [[True] * 3 + [False]] * 3 + [[False] * 4]
        assert torch.equal(warped[0, 0, :3, :3], feats[0, 0][:, columns])
        assert (warped[0, 0][~valid[0]] == 0).all()
    # The view shifted right by 8 (a pad) reads column -1 in its first cell: invalid.
    affine = torch.tensor([[1.0, 8.0, 1.0, 0.0]])
    _, valid = warp_to_view(feats, affine, [(20, 28)], (3, 5), [(20, 36)], STRIDE)
    assert valid[0].tolist() == [[False, True, True, True, True]] * 3
    # Halving 16 x 16: the view's one cell is centred at 0.5, which is 1.0 in the source, 1/16
    # of a cell past the centre (0.5) of source cell 0 towards cell 1.
    small = feats[:, :, :2, :2]
    warped, valid = warp_to_view(
        small, torch.tensor([[0.5, 0.0, 0.5, 0.0]]), [(16, 16)], (1, 1), [(8, 8)], STRIDE
    )
    weights = torch.tensor([15 / 16, 1 / 16])
    expected = (weights[:, None] * weights[None, :] * small[0, 0]).sum()
    assert valid.all() and torch.allclose(warped[0, 0, 0, 0], expected)
    # Doubling: view cells centred at 0.5, 8.5, 16.5, 24.5 read source points 0.25, 4.25, 8.25,
    # 12.25; only 4.25 and 8.25 lie between the centres of the two source cells (0.5 and 8.5).
    _, valid = warp_to_view(
        small, torch.tensor([[2.0, 0.0, 2.0, 0.0]]), [(16, 16)], (4, 4), [(32, 32)], STRIDE
    )
    inner = [False, True, True, False]
    assert valid[0].tolist() == [[a and b for b in inner] for a in inner]


def test_warp_gradients():
    feats = torch.randn(2, 3, 6, 8, requires_grad=True)
    # A flip of a 57 pixel wide crop (exact path), then a rescale (interpolation).
    affines = torch.tensor([[-1.0, 57.0, 1.0, -8.0], [1.25, -10.0, 0.75, 0.0]])
    warped, valid = warp_to_view(
        feats, affines, [(48, 64), (48, 64)], (6, 8), [(40, 48), (36, 60)], STRIDE
    )
    warped.sum().backward()
    grad = feats.grad
    # Exact path: every valid view cell copies one source cell once.
    assert torch.equal(grad[0, 0], grad[0, 0].round()) and grad[0].sum() == 3 * valid[0].sum()
    # Interpolation: the weights of each valid view cell sum to one.
    assert torch.allclose(grad[1].sum(), 3 * valid[1].sum().float())
    assert warp_to_view(feats[:0], affines[:0], [], (6, 8), [], STRIDE)[0].shape == (0, 3, 6, 8)


# ---------------------------------------------------------------------------------------------
# Mapper


def check_view(out):
    """The view's instances are g applied to I's instances (matched by gt_ids)."""
    image, instances, view = out["image"], out["instances"], out["view"]
    g = view["transforms"]
    assert view["image"].dtype == torch.uint8
    assert torch.equal(view["image"], chw(g.apply_image(hwc(image))))
    assert torch.allclose(view["affine"], torch.tensor(transform_to_affine(g, image.shape[1:])))
    vinst = view["instances"]
    assert vinst.image_size == tuple(view["image"].shape[1:])
    assert len(set(vinst.gt_ids.tolist())) == len(vinst)
    source = {int(i): k for k, i in enumerate(instances.gt_ids)}
    # Exactly the instances of I that g leaves a part of are in the view.
    kept = [
        int(i)
        for i, poly in zip(instances.gt_ids, instances.gt_masks.polygons)
        if g.apply_polygons([p.reshape(-1, 2) for p in poly])
    ]
    assert sorted(vinst.gt_ids.tolist()) == kept
    for k, gt_id in enumerate(vinst.gt_ids.tolist()):
        j = source[gt_id]
        assert vinst.gt_classes[k] == instances.gt_classes[j]
        polygons = g.apply_polygons([p.reshape(-1, 2) for p in instances.gt_masks.polygons[j]])
        mapped = PolygonMasks([[p.reshape(-1) for p in polygons]]).get_bounding_boxes().tensor[0]
        assert (vinst.gt_boxes.tensor[k] - mapped).abs().max() < 1.0
        assert (vinst.gt_masks.get_bounding_boxes().tensor[k] - mapped).abs().max() < 1.0
    # An instance of I lying inside the crop is in the view, with its box mapped by g.
    crop = g.transforms[0]
    for j, box in enumerate(instances.gt_boxes.tensor.tolist()):
        if (
            crop.x0 <= box[0]
            and crop.y0 <= box[1]
            and box[2] <= crop.x0 + crop.w
            and box[3] <= crop.y0 + crop.h
        ):
            k = vinst.gt_ids.tolist().index(int(instances.gt_ids[j]))
            mapped = torch.tensor(g.apply_box(np.array([box]))[0], dtype=torch.float32)
            assert (vinst.gt_boxes.tensor[k] - mapped).abs().max() < 1.0
    return vinst


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_mapper_views_match_instances(image_dict, mask_format):
    cfg = make_cfg(**{"INPUT.MASK_FORMAT": mask_format, "MODEL.IUQ.EQUI.CROP_SIZE": (0.4, 0.9)})
    mapper = IUQDatasetMapper(cfg, True)
    assert mapper.view_align == 32  # the stride of P5, the coarsest level fused into F
    original = copy.deepcopy(image_dict)
    np.random.seed(5)
    seen_dropped = False
    for _ in range(6 if mask_format == "polygon" else 2):
        out = mapper(image_dict)
        assert image_dict == original
        instances = out["instances"]
        # The crowd annotation (index 2) is skipped; the ids name the annotations.
        assert instances.gt_ids.tolist() == [0, 1, 3, 4, 5]
        assert instances.gt_classes.tolist() == [0, 1, 2, 3, 1]
        if mask_format == "polygon":
            vinst = check_view(out)
            seen_dropped |= len(vinst) < len(instances)
        else:
            vinst = out["view"]["instances"]
            assert vinst.gt_masks.tensor.shape[1:] == out["view"]["image"].shape[1:]
            boxes = vinst.gt_masks.get_bounding_boxes().tensor
            assert torch.equal(vinst.gt_boxes.tensor, boxes)
    assert mask_format == "bitmask" or seen_dropped


def test_view_alignment_comes_from_the_backbone_strides():
    shapes = {
        "res3": ShapeSpec(channels=4, stride=8),
        "c4": ShapeSpec(channels=4, stride=16),
        "p5": ShapeSpec(channels=4, stride=64),
    }  # names that do not tell the stride
    assert view_alignment(shapes, ["res3", "c4"]) == 16
    assert view_alignment(shapes, ["p5"]) == 64
    for in_features in (["res3", "p9"], []):
        with pytest.raises(ValueError, match="MASK_BRANCH.IN_FEATURES must name backbone outputs"):
            view_alignment(shapes, in_features)

    # The meta-device build reports what the real backbone does, and leaves the device alone.
    cfg = make_cfg(
        **{
            "MODEL.RESNETS.DEPTH": 18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS": 16,
            "MODEL.CONDINST.MASK_BRANCH.IN_FEATURES": ["p3", "p4"],
        }
    )
    assert backbone_output_shapes(cfg) == build_backbone(cfg).output_shape()
    assert torch.empty(1).device.type == "cpu"
    assert IUQDatasetMapper(cfg, True).view_align == 16


def test_mapper_empty_views(image_dict):
    """A view may lose every instance, and an image may have none."""
    cfg = make_cfg(**{"MODEL.IUQ.EQUI.CROP_SIZE": (0.2, 0.2)})
    mapper = IUQDatasetMapper(cfg, True)
    one_corner = dict(image_dict, annotations=[make_annotation(rect_polygon(0, 0, 12, 12), 1)])
    np.random.seed(6)
    outs = [mapper(one_corner) for _ in range(10)]
    empty = [o["view"]["instances"] for o in outs if len(o["view"]["instances"]) == 0]
    assert empty and all(len(o["instances"]) == 1 for o in outs)
    for vinst in empty:
        assert vinst.gt_ids.shape == (0,) and vinst.gt_ids.dtype == torch.int64
        assert vinst.gt_boxes.tensor.shape == (0, 4) and len(vinst.gt_masks) == 0
    out = mapper(dict(image_dict, annotations=[]))
    assert len(out["instances"]) == 0 and len(out["view"]["instances"]) == 0
    assert out["view"]["instances"].has("gt_ids")


def test_mapper_reproducible_and_test_mode(image_dict):
    cfg = make_cfg()
    mapper = IUQDatasetMapper(cfg, True)

    def run(seed):
        np.random.seed(seed)
        return mapper(image_dict)

    a, b, c = run(11), run(11), run(12)
    assert repr(a["view"]["transforms"]) == repr(b["view"]["transforms"])
    assert torch.equal(a["view"]["image"], b["view"]["image"])
    assert torch.equal(a["image"], b["image"])
    boxes_a, boxes_b = (x["view"]["instances"].gt_boxes.tensor for x in (a, b))
    assert torch.equal(boxes_a, boxes_b)
    assert repr(a["view"]["transforms"]) != repr(c["view"]["transforms"])
    # I is what the base mapper makes from the same seed: the view draws after the augmentation.
    np.random.seed(11)
    base = CondInstDatasetMapper(cfg, True)(image_dict)
    assert torch.equal(base["image"], a["image"])
    assert torch.equal(base["instances"].gt_boxes.tensor, a["instances"].gt_boxes.tensor)
    test_out = IUQDatasetMapper(cfg, False)(image_dict)
    assert "view" not in test_out and "instances" not in test_out
    with pytest.raises(ValueError, match="CROP_SIZE"):
        IUQDatasetMapper(make_cfg(**{"MODEL.IUQ.EQUI.CROP_SIZE": (0.0, 1.0)}), True)


# ---------------------------------------------------------------------------------------------
# Feature loss


def test_feature_loss_by_hand():
    a = torch.zeros(1, 2, 1, 3)
    b = torch.zeros(1, 2, 1, 3)
    a[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    b[0, :, 0, 0] = torch.tensor([0.0, 1.0])  # orthogonal: l2 1
    a[0, :, 0, 1] = torch.tensor([2.0, 2.0])
    b[0, :, 0, 1] = torch.tensor([1.0, 1.0])  # parallel: l2 1
    a[0, :, 0, 2] = torch.tensor([100.0, -5.0])  # invalid, ignored
    valid = torch.tensor([[[True, True, False]]])
    assert torch.allclose(feature_equivariance_loss(a, b, valid), torch.tensor(1.0))
    x = torch.randn(2, 8, 4, 5)
    assert (
        feature_equivariance_loss(x, x.clone(), torch.ones(2, 4, 5, dtype=torch.bool)).abs().item()
        < 1e-6
    )


def test_feature_loss_gradients():
    a = torch.randn(2, 4, 3, 3, requires_grad=True)
    b = torch.randn(2, 4, 3, 3, requires_grad=True)
    valid = torch.rand(2, 3, 3) > 0.5
    valid[0, 0, 0] = True
    feature_equivariance_loss(a, b, valid).backward()
    for x in (a, b):
        cell_grad = x.grad.abs().amax(dim=1)
        assert cell_grad[valid].min() > 0 and (cell_grad[~valid] == 0).all()
    # Nothing valid (and zero features where invalid, as the warp leaves them): zero, with graph.
    a.grad = b.grad = None
    loss = feature_equivariance_loss(a, b * 0, torch.zeros(2, 3, 3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a)) and torch.equal(b.grad, torch.zeros_like(b))
