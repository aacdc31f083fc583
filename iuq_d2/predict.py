"""Predict on image files or folders: a COCO results json and a picture per image.

    python -m iuq_d2.predict --config-file configs/Demo/shapes_IUQ.yaml \
        --weights output/demo_shapes_IUQ/model_final.pth --input images/ a.jpg \
        --output predictions [--score-thresh 0.5] [KEY VALUE ...]

writes ``predictions/coco_instances_results.json`` and ``predictions/vis/<image>.png``. Each
result is ``{file_name, category_id, bbox (x, y, w, h), score, segmentation}``, the mask as a
compressed RLE whose counts are a str, as COCOEvaluator writes them; a result names its image
by the file name (relative to the image folder, as in a COCO json's ``images``) because plain
images have no id. Images are read as BGR and resized as in evaluation (INPUT.MIN_SIZE_TEST,
INPUT.MAX_SIZE_TEST), one at a time, on MODEL.DEVICE.
"""

import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import cv2
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from tqdm import tqdm

from .data import read_json
from .visualize import build_predictor, picture_path, render

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
RESULTS_FILE = "coco_instances_results.json"


def list_images(inputs: Sequence[str]) -> List[str]:
    """The image files of ``inputs`` (files, and the jpg/png files of folders, sorted). Their
    names without extension must differ: they name the results and the pictures."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
            files += [os.path.join(path, n) for n in names]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path!r} is neither a file nor a folder")
    if not files:
        raise ValueError(f"no {'/'.join(IMAGE_EXTENSIONS)} images in {list(inputs)}")
    seen: Dict[str, str] = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in seen:
            raise ValueError(f"two images would be drawn to {stem}.png: {seen[stem]} and {path}")
        seen[stem] = path
    return files


def dataset_category_ids(metadata: Any, num_classes: int) -> List[int]:
    """The dataset's category id of each contiguous class: from its metadata's
    ``thing_dataset_id_to_contiguous_id``, which a COCO dataset has once loaded; before that
    the sorted category ids of its ``json_file`` (which the load maps to 0, 1, ...); without
    one, 1, 2, ... as COCO ids usually go."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id") if metadata else None
    if id_map:
        return [dataset_id for dataset_id, _ in sorted(id_map.items(), key=lambda kv: kv[1])]
    json_file = metadata.get("json_file") if metadata else None
    if json_file and os.path.isfile(json_file):
        return sorted(c["id"] for c in read_json(json_file)["categories"])
    return list(range(1, num_classes + 1))


def predict(
    config_file: str,
    weights: str,
    inputs: Sequence[str],
    output_dir: str,
    score_threshold: float = 0.5,
    opts: Sequence[str] = (),
) -> str:
    """Write the results json and the pictures of ``inputs`` to ``output_dir``; returns the
    json's path. Detections below ``score_threshold`` are left out of both."""
    files = list_images(inputs)
    predictor = build_predictor(config_file, weights, opts)
    cfg = predictor.cfg
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    class_names = metadata.get("thing_classes", []) if metadata else []
    category_ids = dataset_category_ids(metadata, cfg.MODEL.FCOS.NUM_CLASSES)
    vis_dir = os.path.join(output_dir, "vis")
    os.makedirs(vis_dir, exist_ok=True)

    results: List[Dict[str, Any]] = []
    for path in tqdm(files, desc="predict", unit="image"):
        image = read_image(path, format="BGR")
        instances = predictor(image)["instances"].to("cpu")
        instances = instances[instances.scores >= score_threshold]
        for result in instances_to_coco_json(instances, None):
            del result["image_id"]
            result["file_name"] = os.path.basename(path)
            result["category_id"] = category_ids[result["category_id"]]
            results.append(result)
        cv2.imwrite(
            picture_path(vis_dir, path), render(image, instances, class_names, score_threshold)
        )

    out = os.path.join(output_dir, RESULTS_FILE)
    with open(out, "w") as f:
        json.dump(results, f)
    print(f"{len(results)} detections on {len(files)} images: {out}, pictures in {vis_dir}")
    return out


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint (.pth)")
    parser.add_argument("--input", nargs="+", required=True, help="image files and folders")
    parser.add_argument("--output", required=True, help="folder for the json and the pictures")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="lowest score kept")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    return predict(
        args.config_file, args.weights, args.input, args.output, args.score_thresh, args.opts
    )


if __name__ == "__main__":
    main()
