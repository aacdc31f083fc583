"""Draw a model's predictions on images with detectron2's Visualizer and save them as PNG.

    python -m iuq_d2.visualize --config-file configs/Demo/shapes_IUQ.yaml \
        --weights output/demo_shapes_IUQ/model_final.pth --dataset shapes_val --num 8 \
        --output output/vis
    python -m iuq_d2.visualize --config-file ... --weights ... --input a.jpg b.jpg --output vis
"""

import argparse
import os
from typing import Iterable, List, Optional

import cv2
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

from .engine.config_loader import load_config


def build_predictor(
    config_file: str, weights: str, score_threshold: float, opts: List[str]
) -> DefaultPredictor:
    cfg = load_config(config_file, opts, freeze=False)
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = score_threshold
    cfg.freeze()
    return DefaultPredictor(cfg)


def visualize(
    predictor: DefaultPredictor,
    files: Iterable[str],
    output_dir: str,
    metadata_name: Optional[str] = None,
    score_threshold: float = 0.3,
) -> List[str]:
    """Predict on each image file and write ``<output_dir>/<name>.png``; returns the paths."""
    os.makedirs(output_dir, exist_ok=True)
    metadata = MetadataCatalog.get(metadata_name) if metadata_name else None
    written = []
    for path in files:
        image = read_image(path, format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= score_threshold]
        drawing = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        drawing = drawing.draw_instance_predictions(instances)
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out, drawing.get_image()[:, :, ::-1])
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

    predictor = build_predictor(
        args.config_file, args.weights, min(args.score_threshold, 0.05), args.opts
    )
    if args.dataset:
        files = [d["file_name"] for d in DatasetCatalog.get(args.dataset)[: args.num]]
        metadata_name = args.dataset
    else:
        files = args.input
        metadata_name = predictor.cfg.DATASETS.TEST[0] if predictor.cfg.DATASETS.TEST else None
    written = visualize(predictor, files, args.output, metadata_name, args.score_threshold)
    print(f"wrote {len(written)} images to {args.output}")
    return written


if __name__ == "__main__":
    main()
