"""The synthetic "cells" instance segmentation dataset: crowds of look-alike, touching objects,
where telling one instance from its neighbour matters more than recognising what it is.

Each image (128-192 px sides) holds 15-45 blobs of one or two classes: round "cell"s with a darker
nucleus and elongated "seed"s. Within an image all objects share a base colour (with a small
per-object jitter), a size (equivalent diameter 10-28 px over the dataset, +-12% within an image),
a texture, a darker rim and a lighting direction, so neighbours look alike and the class is given
by shape, not colour. Most objects are
placed against an earlier one, touching or overlapping it slightly; later objects occlude earlier
ones and a mask holds the visible pixels. A placement that would hide more than a quarter of an
object, split it, or leave a hole (which COCO polygons cannot express) is drawn again. The
background is textured and noisy, with fibres, debris specks and blurred "ghost" blobs of the
object colour that are not instances.

Everything depends only on (num_images, seed): image ``i`` is drawn from its own random stream, so
two processes generating the same split write the same bytes.
"""

import json
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np

from .shapes import _background, _fill, _region, mask_to_polygons

__all__ = [
    "CELLS_CLASSES",
    "CELLS_SPLITS",
    "GENERATOR_VERSION",
    "generate_cells",
    "render_image",
]

# Part of the cache folder name: bump it whenever the output changes so old files are not reused.
GENERATOR_VERSION = "v1"
CELLS_CLASSES = ("cell", "seed")
# split -> (number of images, seed). Different seeds keep val images out of train.
CELLS_SPLITS: Dict[str, Tuple[int, int]] = {"train": (1000, 0), "val": (150, 1)}

# Instances per image are drawn uniformly from this range; a few may not find room.
NUM_OBJECTS = (15, 45)
# Per image: the fraction of the image the objects aim to cover, which with the count sets the
# base size (equivalent diameter), then clipped; each object jitters it by SIZE_JITTER.
COVERAGE = (0.35, 0.6)
BASE_SIZE = (11.5, 25.0)
SIZE_JITTER = 0.12
# Major / minor axis ratio per class, and the most an outline harmonic may bend it (fraction of
# the radius).
ASPECTS = ((1.0, 1.35), (1.9, 2.6))
WOBBLE = 0.05
OUTLINE_VERTICES = 32
# Per image: P(cells only), P(mixed), P(seeds only).
CLASS_MIX = (0.35, 0.45, 0.2)
# Probability that an object is placed anywhere rather than against an earlier object, and the
# centre distance to that object as a fraction of the distance at which their outlines would touch.
FREE_PLACEMENT = 0.25
TOUCH_DISTANCE = (0.82, 1.02)
PLACEMENT_TRIES_PER_OBJECT = 4
# An object must keep this many visible pixels and this fraction of its in-image pixels, and have
# this fraction of its area inside the image.
MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.75
MIN_INSIDE_FRACTION = 0.5


def _outline(category: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2), around the origin, of a wobbly ellipse with equivalent diameter ``size``.

    Seeds are elongated and egg-shaped (one end narrower), cells are nearly round.
    """
    aspect = rng.uniform(*ASPECTS[category])
    a, b = size / 2 * np.sqrt(aspect), size / 2 / np.sqrt(aspect)
    t = np.linspace(0, 2 * np.pi, OUTLINE_VERTICES, endpoint=False)
    harmonics = np.arange(2, 5)[:, None]
    phases = rng.uniform(0, 2 * np.pi, (3, 1))
    wobble = 1 + (rng.uniform(0, WOBBLE, (3, 1)) * np.cos(harmonics * t + phases)).sum(axis=0)
    taper = rng.uniform(0.0, 0.25) if category == 1 else 0.0
    x, y = a * np.cos(t) * wobble, b * np.sin(t) * (1 - taper * np.cos(t)) * wobble
    angle = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([cos * x - sin * y, sin * x + cos * y], axis=1)


def _is_clean(visible: np.ndarray, full_pixels: int) -> bool:
    """Whether a visible mask (cropped to its object) is large enough, one piece and hole-free.

    Stricter than shapes' check: cells are only grazed by their neighbours, never cut apart.
    """
    num_pixels = int(visible.sum())
    if num_pixels < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full_pixels):
        return False
    # With RETR_CCOMP, a second contour is either a second piece or a hole.
    contours, _ = cv2.findContours(visible.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    return len(contours) == 1


def _object_color(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image's base object colour: random, but clearly apart from the mean background."""
    mean = background.reshape(-1, 3).mean(axis=0)
    color = rng.uniform(0, 255, 3)
    for _ in range(50):
        if np.abs(color - mean).sum() >= 150:
            break
        color = rng.uniform(0, 255, 3)
    return color


def _add_clutter(
    image: np.ndarray, color: np.ndarray, size: float, rng: np.random.Generator
) -> None:
    """Draw debris specks and blurred, faint ghost blobs of the object colour into ``image``."""
    height, width = image.shape[:2]
    ghosts = np.zeros((height, width), np.float64)
    for _ in range(int(rng.integers(0, 5))):
        center = tuple(int(v) for v in rng.uniform(0, 1, 2) * (width, height))
        axes = tuple(int(v) for v in size / 2 * rng.uniform(0.7, 1.3, 2))
        cv2.ellipse(ghosts, center, axes, rng.uniform(0, 360), 0, 360, rng.uniform(0.2, 0.4), -1)
    ghosts = cv2.GaussianBlur(ghosts, (0, 0), rng.uniform(1.5, 3.0))[..., None]
    image[:] = image * (1 - ghosts) + color * ghosts
    for _ in range(int(rng.integers(5, 30))):
        center = tuple(int(v) for v in rng.uniform(0, 1, 2) * (width, height))
        speck = color * rng.uniform(0.2, 0.9) + rng.normal(0, 20, 3)
        cv2.circle(image, center, int(rng.integers(1, 4)), tuple(float(c) for c in speck), -1)


def _place(
    outline: np.ndarray,
    placed: List[Tuple[np.ndarray, np.ndarray]],
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A centre for ``outline``: anywhere, or next to a placed (centre, outline), touching it or
    overlapping it a little.

    Along the direction u between the centres, the outlines touch when the centre distance is
    the sum of their support functions max(v . u) and max(v . -u).
    """
    if not placed or rng.uniform() < FREE_PLACEMENT:
        return rng.uniform(0, 1, 2) * (width, height)
    other_center, other_outline = placed[int(rng.integers(len(placed)))]
    t = rng.uniform(0, 2 * np.pi)
    u = np.array([np.cos(t), np.sin(t)])
    reach = (other_outline @ u).max() + (-outline @ u).max()
    return other_center + reach * rng.uniform(*TOUCH_DISTANCE) * u


def _paint(
    image: np.ndarray,
    region: Tuple[slice, slice],
    mask: np.ndarray,
    center: np.ndarray,
    category: int,
    color: np.ndarray,
    style: Dict[str, float],
) -> None:
    """Paint one object (``mask`` is its full shape cropped to ``region``) over ``image``."""
    ys = region[0].start + np.arange(mask.shape[0])[:, None] - center[1]
    xs = region[1].start + np.arange(mask.shape[1])[None, :] - center[0]
    radius = np.sqrt(mask.sum() / np.pi)
    light = style["light"] * (style["light_x"] * xs + style["light_y"] * ys) / radius
    # Darker towards the outline, so touching objects are separated by a faint seam.
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    shade = 1 - style["rim"] * np.clip(1 - (distance - 1) / style["rim_width"], 0, 1)
    if category == 0:
        nucleus = (xs - style["nucleus_dx"] * radius) ** 2 + ys**2 < (0.35 * radius) ** 2
        shade = np.where(nucleus, shade * style["nucleus"], shade)
    value = color * shade[..., None] + np.clip(light, -style["light"], style["light"])[..., None]
    image[region][mask] = value[mask]


def render_image(seed: int, index: int) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw image ``index`` of the dataset with ``seed``.

    Returns:
        the BGR uint8 image, and per object (bottom to top) its class index into CELLS_CLASSES
        and its boolean visible mask.
    """
    rng = np.random.default_rng([seed, index])
    height, width = (int(v) for v in rng.integers(128, 193, 2))
    num_objects = int(rng.integers(NUM_OBJECTS[0], NUM_OBJECTS[1] + 1))
    area = rng.uniform(*COVERAGE) * height * width / num_objects
    base_size = float(np.clip(np.sqrt(4 * area / np.pi), *BASE_SIZE))
    seed_fraction = (0.0, rng.uniform(0.2, 0.8), 1.0)[rng.choice(3, p=CLASS_MIX)]

    image = _background(height, width, rng)
    base_color = _object_color(image, rng)
    _add_clutter(image, base_color, base_size, rng)

    # owner[y, x]: the index of the object visible at that pixel, -1 for background.
    owner = np.full((height, width), -1, np.int32)
    classes: List[int] = []
    regions: List[Tuple[slice, slice]] = []
    masks: List[np.ndarray] = []
    placed: List[Tuple[np.ndarray, np.ndarray]] = []
    for _ in range(PLACEMENT_TRIES_PER_OBJECT * num_objects):
        if len(classes) == num_objects:
            break
        category = int(rng.uniform() < seed_fraction)
        size = base_size * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
        outline = _outline(category, size, rng)
        center = _place(outline, placed, height, width, rng)
        polygon = outline + center
        region = _region(polygon)
        full = _fill(polygon, height, width)
        mask = full[region]
        if mask.sum() < max(MIN_VISIBLE_PIXELS, MIN_INSIDE_FRACTION * np.pi * size**2 / 4):
            continue
        covered = owner[region][mask]
        if not all(
            _is_clean((owner[regions[j]] == j) & ~full[regions[j]], int(masks[j].sum()))
            for j in np.unique(covered[covered >= 0])
        ):
            continue
        owner[region][mask] = len(classes)
        classes.append(category)
        regions.append(region)
        masks.append(mask)
        placed.append((center, outline))

    light_angle = rng.uniform(0, 2 * np.pi)
    style = {
        "light": rng.uniform(5, 25),
        "light_x": np.cos(light_angle),
        "light_y": np.sin(light_angle),
        "rim": rng.uniform(0.1, 0.35),
        "rim_width": rng.uniform(1.5, 3.5),
        "nucleus": rng.uniform(0.65, 0.85),
        "nucleus_dx": rng.uniform(-0.2, 0.2),
    }
    for category, region, mask, (center, _) in zip(classes, regions, masks, placed):
        color = base_color + rng.normal(0, 6, 3)
        _paint(image, region, mask, center, category, color, style)
    # A texture shared by the whole image: the same grain runs across neighbouring objects.
    grain = cv2.GaussianBlur(rng.normal(0, 1, (height, width)), (0, 0), rng.uniform(0.7, 1.5))
    image[owner >= 0] += (rng.uniform(15, 40) * grain[owner >= 0])[:, None]
    image += rng.normal(0, rng.uniform(3, 10), image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, [(category, owner == k) for k, category in enumerate(classes)]


def generate_cells(out_dir: str, num_images: int, seed: int) -> str:
    """Write ``num_images`` images to ``out_dir/images`` and their COCO json to
    ``out_dir/annotations.json``, whose path is returned.

    Writes in place, like ``generate_shapes``: share ``out_dir`` only through a rename.
    """
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    images: List[dict] = []
    annotations: List[dict] = []
    for index in range(num_images):
        image, objects = render_image(seed, index)
        file_name = f"{index:06d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        height, width = image.shape[:2]
        images.append({"id": index + 1, "file_name": file_name, "height": height, "width": width})
        for category, mask in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": category + 1,
                    "iscrowd": 0,
                    # The polygons rasterise back to exactly these pixels (see mask_to_polygons).
                    "area": int(mask.sum()),
                    "bbox": list(cv2.boundingRect(mask.astype(np.uint8))),
                    "segmentation": mask_to_polygons(mask),
                }
            )
    dataset = {
        "info": {
            "description": "iuq_d2 synthetic cells",
            "version": GENERATOR_VERSION,
            "seed": seed,
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CELLS_CLASSES)],
    }
    json_path = os.path.join(out_dir, "annotations.json")
    with open(json_path, "w") as f:
        # One dumps is much faster than json.dump's many small writes (30k polygons for train).
        f.write(json.dumps(dataset, separators=(",", ":")))
    return json_path
