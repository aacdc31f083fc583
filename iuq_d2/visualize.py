"""Draw a model's predictions, beside the ground truth where there is one, and save them as PNG.

    python -m iuq_d2.visualize --config-file configs/Demo/shapes_IUQ.yaml \
        --weights output/demo_shapes_IUQ/model_final.pth --dataset shapes_val --num 8 \
        --output output/vis
    python -m iuq_d2.visualize --config-file ... --weights ... --input a.jpg b.jpg --output vis

The demo's images are 128-192 px: drawn at that size, detectron2's Visualizer puts a label over
most objects. Here the image is upscaled by an integer factor until its short side is at least
:data:`MIN_SHORT_SIDE` px, masks are a light fill with an outline, and each small label goes above
(else below) its box where it covers no other label. A dataset image is drawn as
"ground truth | prediction", a plain image file as the prediction alone.
"""

import argparse
import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import annotations_to_instances, read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap

from .engine.checkpoint import StrictCheckpointer
from .engine.config_loader import load_config

MIN_SHORT_SIDE = 480
MASK_ALPHA = 0.4
FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_SCALE = 0.4
HEADER_SCALE = 0.55
HEADER_HEIGHT = 26
GAP = 6  # px of white between the two panels
COLORS = colormap(rgb=False, maximum=255)  # BGR, one per class

Rect = Tuple[int, int, int, int]  # x0, y0, x1, y1


class Predictor(DefaultPredictor):
    """detectron2's DefaultPredictor, except that the weights load with
    :class:`StrictCheckpointer`: a checkpoint that lacks some of the model's weights raises
    instead of predicting with their random initial values."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        StrictCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT


def build_predictor(config_file: str, weights: str, opts: Sequence[str] = ()) -> Predictor:
    """The predictor of the config with ``weights``: test-time resize, BGR input, the config's
    candidate threshold (MODEL.FCOS.INFERENCE_TH_TEST) and device."""
    cfg = load_config(config_file, opts, freeze=False)
    cfg.MODEL.WEIGHTS = weights
    cfg.freeze()
    return Predictor(cfg)


def upscale_factor(height: int, width: int, min_short_side: int = MIN_SHORT_SIDE) -> int:
    """The smallest integer factor that brings the short side to ``min_short_side`` px (1 for
    images that are that large): an integer one keeps the pixel grid, so that boxes scale
    exactly and no source pixel is drawn wider than its neighbours."""
    return max(1, math.ceil(min_short_side / min(height, width)))


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _label_rect(
    box: np.ndarray, size: Tuple[int, int], shape: Tuple[int, int], placed: List[Rect]
) -> Rect:
    """Where a label of ``size`` (w, h) goes: above the box, else below it (both outside the
    object), else inside its top edge; the first of these in the image that covers no label
    already placed, else the first."""
    (w, h), (height, width) = size, shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x = min(max(x0, 0), max(width - w, 0))
    tops = [y for y in (y0 - h - 1, y1 + 1) if 0 <= y <= height - h]
    tops.append(min(max(y0 + 1, 0), max(height - h, 0)))
    rects = [(x, y, x + w, y + h) for y in tops]
    return next((r for r in rects if not any(_overlaps(r, p) for p in placed)), rects[0])


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    masks: Optional[np.ndarray],
    class_names: Sequence[str],
    scores: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Draw instances on ``image`` (BGR, already upscaled) with boxes (N, 4) and masks (N, H, W)
    in its pixels; a copy. Fills go first and labels last, so that no fill covers a label."""
    out = image.astype(np.float32)
    colors = [COLORS[int(c) % len(COLORS)] for c in classes]
    if masks is not None:
        for mask, color in zip(masks, colors):
            out[mask] = (1 - MASK_ALPHA) * out[mask] + MASK_ALPHA * color
    out = out.round().astype(np.uint8)
    for i, (box, color) in enumerate(zip(boxes, colors)):
        color = tuple(int(v) for v in color)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, 1, cv2.LINE_AA)
        if masks is not None:
            contours, _ = cv2.findContours(
                masks[i].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
            )
            cv2.drawContours(out, contours, -1, color, 2, cv2.LINE_AA)
    placed: List[Rect] = []
    for i, (box, color) in enumerate(zip(boxes, colors)):
        c = int(classes[i])
        text = class_names[c] if c < len(class_names) else str(c)
        if scores is not None:
            text += f" {scores[i]:.2f}"
        (w, h), baseline = cv2.getTextSize(text, FONT, LABEL_SCALE, 1)
        rect = _label_rect(box, (w + 4, h + baseline + 2), out.shape[:2], placed)
        placed.append(rect)
        dark = tuple(int(0.6 * v) for v in color)
        cv2.rectangle(out, rect[:2], (rect[2] - 1, rect[3] - 1), dark, -1)
        cv2.putText(
            out,
            text,
            (rect[0] + 2, rect[3] - baseline - 1),
            FONT,
            LABEL_SCALE,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out


def _upscaled_masks(masks: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Masks (N, h, w) resized to ``size`` (W, H), bilinearly and thresholded at 0.5: their
    edges then follow the bilinearly upscaled image rather than the source pixel grid."""
    if not len(masks):
        return np.zeros((0, size[1], size[0]), dtype=bool)
    resized = [
        cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) for m in masks
    ]
    return np.stack(resized) >= 0.5


def _panel(
    image: np.ndarray, instances: Instances, class_names: Sequence[str], scale: int, header: str
) -> np.ndarray:
    """One upscaled image with its instances (predicted or ground truth) and a header above."""
    height, width = image.shape[:2]
    size = (width * scale, height * scale)
    big = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    predicted = instances.has("pred_boxes")
    boxes = (instances.pred_boxes if predicted else instances.gt_boxes).tensor.numpy() * scale
    classes = (instances.pred_classes if predicted else instances.gt_classes).numpy()
    masks = None
    if instances.has("pred_masks") or instances.has("gt_masks"):
        raw = instances.pred_masks if predicted else instances.gt_masks.tensor
        masks = _upscaled_masks(raw.numpy(), size)
    scores = instances.scores.numpy() if predicted else None
    drawn = draw_instances(big, boxes, classes, masks, class_names, scores)
    bar = np.zeros((HEADER_HEIGHT, size[0], 3), dtype=np.uint8)
    cv2.putText(
        bar, header, (6, HEADER_HEIGHT - 8), FONT, HEADER_SCALE, (255, 255, 255), 1, cv2.LINE_AA
    )
    return np.concatenate([bar, drawn])


def ground_truth(record: Dict[str, Any], image_shape: Tuple[int, int]) -> Instances:
    """The non-crowd annotations of a dataset dict as Instances with bitmasks."""
    annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    return annotations_to_instances(annotations, image_shape, mask_format="bitmask")


def render(
    image: np.ndarray,
    predictions: Instances,
    class_names: Sequence[str],
    score_threshold: float,
    gt: Optional[Instances] = None,
) -> np.ndarray:
    """The picture of one image (BGR) and its predictions (on the CPU), "ground truth |
    prediction" when ``gt`` is given."""
    scale = upscale_factor(*image.shape[:2])
    pred = _panel(
        image,
        predictions,
        class_names,
        scale,
        f"prediction: {len(predictions)} with score >= {score_threshold:.2f}",
    )
    if gt is None:
        return pred
    truth = _panel(image, gt, class_names, scale, f"ground truth: {len(gt)} objects")
    gap = np.full((pred.shape[0], GAP, 3), 255, dtype=np.uint8)
    return np.concatenate([truth, gap, pred], axis=1)


def picture_path(output_dir: str, file_name: str) -> str:
    return os.path.join(output_dir, os.path.splitext(os.path.basename(file_name))[0] + ".png")


def visualize(
    predictor: DefaultPredictor,
    records: Iterable[Dict[str, Any]],
    output_dir: str,
    metadata_name: Optional[str] = None,
    score_threshold: float = 0.3,
) -> List[str]:
    """Predict on the ``file_name`` of each dataset dict and write ``<output_dir>/<name>.png``,
    beside its ``annotations`` if it has them; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    metadata = MetadataCatalog.get(metadata_name) if metadata_name else None
    class_names = metadata.get("thing_classes", []) if metadata else []
    written = []
    for record in records:
        image = read_image(record["file_name"], format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= score_threshold]
        gt = ground_truth(record, image.shape[:2]) if "annotations" in record else None
        out = picture_path(output_dir, record["file_name"])
        cv2.imwrite(out, render(image, instances, class_names, score_threshold, gt))
        written.append(out)
    return written


def main(argv: Optional[List[str]] = None) -> List[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint (.pth)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="image files")
    source.add_argument("--dataset", help="a registered dataset; its first --num images are drawn")
    parser.add_argument("--num", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--output", required=True, help="folder for the PNG files")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)

    predictor = build_predictor(args.config_file, args.weights, args.opts)
    if args.dataset:
        records = DatasetCatalog.get(args.dataset)[: args.num]
        metadata_name = args.dataset
    else:
        records = [{"file_name": f} for f in args.input]
        metadata_name = predictor.cfg.DATASETS.TEST[0] if predictor.cfg.DATASETS.TEST else None
    written = visualize(predictor, records, args.output, metadata_name, args.score_threshold)
    print(f"wrote {len(written)} images to {args.output}")
    return written


if __name__ == "__main__":
    main()
