"""The synthetic "shapes" instance segmentation dataset, iuq_d2's embedded default for the demo and
the tests: it needs no download and a small CondInst learns it on a CPU in minutes.

Each image is small (128-192 px sides), has a textured, noisy background with clutter lines, and
holds circles, rectangles, triangles and stars of random colour at three scales that overlap and
touch. Objects are drawn in order, so a mask holds the pixels of its object that stay visible:
the objects drawn over it are cut out. A placement that would leave an object almost hidden,
split into slivers, or with a hole (which COCO polygons cannot express) is drawn again, so every
visible object pixel belongs to exactly one mask and every mask matches its polygons.

Everything depends only on (num_images, seed): image ``i`` is drawn from its own random stream, so
two processes generating the same split write the same bytes.
"""

import json
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "GENERATOR_VERSION",
    "SHAPES_CLASSES",
    "SHAPES_SPLITS",
    "generate_shapes",
    "mask_to_polygons",
    "render_image",
]

# Part of the cache folder name: bump it whenever the output changes so old files are not reused.
GENERATOR_VERSION = "v3"
SHAPES_CLASSES = ("circle", "rectangle", "triangle", "star")
# split -> (number of images, seed). Different seeds keep val images out of train.
SHAPES_SPLITS: Dict[str, Tuple[int, int]] = {"train": (1500, 0), "val": (200, 1)}

# Every EMPTY_EVERY-th image has no object: 5% of the images, at fixed indices.
EMPTY_EVERY = 20
MAX_OBJECTS = 8
# Object extent in pixels per scale (small, medium, large) and how often each scale is drawn.
SCALES = ((10, 20), (22, 48), (56, 110))
SCALE_PROBS = (0.25, 0.45, 0.3)
# A placement is redrawn if any object would keep fewer visible pixels than this, less than this
# fraction of its own area, or a connected piece smaller than MIN_PIECE_PIXELS.
MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.3
MIN_PIECE_PIXELS = 8
PLACEMENT_TRIES = 20
# Polygons are traced on masks upsampled by this factor (see mask_to_polygons).
TRACE_UPSAMPLE = 4


def _shape_polygon(
    category: str, center: np.ndarray, size: float, rng: np.random.Generator
) -> np.ndarray:
    """Vertices (N, 2) of an object of ``category`` whose extent is about ``size`` pixels."""
    r = size / 2
    angle = rng.uniform(0, 2 * np.pi)
    if category == "circle":
        n = max(16, int(np.pi * size / 2))
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        radii = np.full(n, r)
    elif category == "rectangle":
        h = rng.uniform(0.5, 1.0)
        corner = np.arctan(h)
        t = np.array([corner, np.pi - corner, np.pi + corner, 2 * np.pi - corner]) + angle
        radii = np.full(4, r)
    elif category == "triangle":
        t = angle + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
        radii = r * rng.uniform(0.85, 1.0, 3)
    else:
        t = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.4, 0.55))
    return center + np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)


def _fill(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean mask of the pixels inside ``polygon``, with 1/16 px vertex precision."""
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.round(polygon * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _visible(masks: List[np.ndarray]) -> List[np.ndarray]:
    """Per object, the pixels not covered by the objects drawn after it."""
    covered = np.zeros_like(masks[0])
    visible = []
    for mask in reversed(masks):
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


def _region(polygon: np.ndarray) -> Tuple[slice, slice]:
    """The rows and columns of the image that ``polygon`` may cover (a mask's slice of them)."""
    (x0, y0), (x1, y1) = np.floor(polygon.min(axis=0)), np.ceil(polygon.max(axis=0))
    return slice(max(int(y0), 0), max(int(y1) + 1, 0)), slice(max(int(x0), 0), max(int(x1) + 1, 0))


def _is_clean(visible: np.ndarray, full_area: float) -> bool:
    """Whether a visible mask (cropped to its object) is large enough, has no sliver and no hole."""
    num_pixels = int(visible.sum())
    if num_pixels < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * full_area):
        return False
    mask = visible.astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if stats[1:, cv2.CC_STAT_AREA].min() < MIN_PIECE_PIXELS:
        return False
    _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return bool((hierarchy[0][:, 3] < 0).all())


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A float image: random colour, low-frequency blotches and a few clutter lines."""
    base = rng.uniform(0, 255, 3)
    grid = rng.normal(0, 1, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3))
    blotches = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    image = np.ascontiguousarray(base + rng.uniform(10, 40) * blotches)
    for _ in range(int(rng.integers(0, 5))):
        p, q = rng.uniform(0, [width, height], (2, 2)).astype(np.int32)
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.line(image, tuple(map(int, p)), tuple(map(int, q)), color, int(rng.integers(1, 3)))
    return image


def _object_color(
    background: np.ndarray, others: List[np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """A random colour that stands out from the background and from the other objects."""
    mean = background.reshape(-1, 3).mean(axis=0)
    color = rng.uniform(0, 255, 3)
    for _ in range(50):
        if np.abs(color - mean).sum() >= 120 and all(np.abs(color - o).sum() >= 60 for o in others):
            break
        color = rng.uniform(0, 255, 3)
    return color


def _place(
    existing: List[Tuple[np.ndarray, float]],
    size: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """A center: anywhere, overlapping an existing object, or touching one."""
    mode = rng.choice(3, p=(0.4, 0.35, 0.25)) if existing else 0
    if mode == 0:
        return rng.uniform(0, 1, 2) * (width, height)
    other_center, other_size = existing[int(rng.integers(len(existing)))]
    reach = (size + other_size) / 2
    distance = reach * (rng.uniform(0.3, 0.9) if mode == 1 else rng.uniform(0.95, 1.05))
    t = rng.uniform(0, 2 * np.pi)
    return other_center + distance * np.array([np.cos(t), np.sin(t)])


def render_image(seed: int, index: int) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Draw image ``index`` of the dataset with ``seed``.

    Returns:
        the BGR uint8 image, and per object (bottom to top) its class index into SHAPES_CLASSES
        and its boolean visible mask.
    """
    rng = np.random.default_rng([seed, index])
    height, width = (int(v) for v in rng.integers(128, 193, 2))
    image = _background(height, width, rng)
    num_objects = (
        0 if index % EMPTY_EVERY == EMPTY_EVERY - 1 else int(rng.integers(1, MAX_OBJECTS + 1))
    )

    classes: List[int] = []
    masks: List[np.ndarray] = []
    areas: List[float] = []
    regions: List[Tuple[slice, slice]] = []
    placed: List[Tuple[np.ndarray, float]] = []
    colors: List[np.ndarray] = []
    for _ in range(num_objects):
        category = int(rng.integers(len(SHAPES_CLASSES)))
        scale = rng.choice(len(SCALES), p=SCALE_PROBS)
        low, high = SCALES[scale]
        size = rng.uniform(low, min(high, 0.8 * min(height, width)))
        for _ in range(PLACEMENT_TRIES):
            center = _place(placed, size, height, width, rng)
            polygon = _shape_polygon(SHAPES_CLASSES[category], center, size, rng)
            mask = _fill(polygon, height, width)
            area = cv2.contourArea(polygon.astype(np.float32))
            region = _region(polygon)
            visible = _visible(masks + [mask])
            if all(
                _is_clean(v[r], a) for v, a, r in zip(visible, areas + [area], regions + [region])
            ):
                break
        else:
            continue
        classes.append(category)
        masks.append(mask)
        areas.append(area)
        regions.append(region)
        placed.append((center, size))
        colors.append(_object_color(image, colors, rng))

    ys, xs = np.mgrid[0:height, 0:width]
    for mask, color in zip(masks, colors):
        gradient = rng.uniform(-0.4, 0.4, 2)
        shade = gradient[0] * (xs - xs[mask].mean()) + gradient[1] * (ys - ys[mask].mean())
        image[mask] = color + np.clip(shade[mask], -30, 30)[:, None]
    image += rng.normal(0, rng.uniform(3, 12), image.shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, list(zip(classes, _visible(masks) if masks else []))


def mask_to_polygons(mask: np.ndarray) -> List[List[float]]:
    """COCO polygons (one per connected piece) that pycocotools rasterises back into ``mask``.

    pycocotools, like detectron2, takes pixel (x, y) as the square [x, x + 1] x [y, y + 1] and puts
    it inside a polygon when its centre is. Tracing the centres of the boundary sub-pixels of the
    mask upsampled by TRACE_UPSAMPLE gives a contour 1 / (2 * TRACE_UPSAMPLE) px inside the pixel
    edges, far from the pixel centres, and smoothing it by 1 / TRACE_UPSAMPLE px keeps it so.
    """
    ys, xs = np.nonzero(mask)
    x0, y0 = xs.min() - 1, ys.min() - 1
    crop = np.pad(mask[y0 + 1 : ys.max() + 1, x0 + 1 : xs.max() + 1], 1).astype(np.uint8)
    k = TRACE_UPSAMPLE
    crop = cv2.resize(crop, None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2) + 0.5
        points = points / k + (x0, y0)
        if len(points) >= 3:
            polygons.append([round(float(v), 3) for v in points.reshape(-1)])
    return polygons


def generate_shapes(out_dir: str, num_images: int, seed: int) -> str:
    """Write ``num_images`` images to ``out_dir/images`` and their COCO json to
    ``out_dir/annotations.json``, whose path is returned.

    Writes in place: callers that share ``out_dir`` between processes generate into a temporary
    folder and rename it (see ``iuq_d2.data.datasets``).
    """
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    images: List[dict] = []
    annotations: List[dict] = []
    for index in range(num_images):
        image, objects = render_image(seed, index)
        file_name = f"{index:06d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        image_id = index + 1
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category, mask in objects:
            polygons = mask_to_polygons(mask)
            rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
            ys, xs = np.nonzero(mask)
            bbox = [
                int(xs.min()),
                int(ys.min()),
                int(xs.max() - xs.min() + 1),
                int(ys.max() - ys.min() + 1),
            ]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category + 1,
                    "iscrowd": 0,
                    "area": int(mask_util.area(rle)),
                    "bbox": bbox,
                    "segmentation": polygons,
                }
            )
    dataset = {
        "info": {
            "description": "iuq_d2 synthetic shapes",
            "version": GENERATOR_VERSION,
            "seed": seed,
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(SHAPES_CLASSES)],
    }
    json_path = os.path.join(out_dir, "annotations.json")
    with open(json_path, "w") as f:
        json.dump(dataset, f, separators=(",", ":"))
    return json_path
