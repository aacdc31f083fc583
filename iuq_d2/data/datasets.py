"""Dataset registration for iuq_d2: the built-in synthetic shapes splits, COCO-format datasets
listed in ``DATASETS.CUSTOM_COCO``, and a COCO loader that turns malformed json into errors that
name the file and the offending entry instead of failing later inside training.
"""

import functools
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes import GENERATOR_VERSION, SHAPES_CLASSES, SHAPES_SPLITS, generate_shapes

__all__ = [
    "SHAPES_DATASETS",
    "check_num_classes",
    "default_cache_root",
    "ensure_shapes",
    "load_coco_json_checked",
    "register_builtin_datasets",
    "register_custom_coco",
]

logger = logging.getLogger(__name__)

# Registered dataset name -> shapes split.
SHAPES_DATASETS = {"shapes_train": "train", "shapes_val": "val"}


def default_cache_root() -> str:
    """Where generated datasets live: $IUQ_D2_CACHE, else ~/.cache/iuq_d2."""
    return os.environ.get("IUQ_D2_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "iuq_d2"
    )


def ensure_shapes(out_dir: str, num_images: int, seed: int) -> str:
    """Generate the shapes dataset into ``out_dir`` unless it is there, and return its json path.

    Several processes (distributed workers, pytest-xdist) may call this at once: each one that
    finds no dataset generates into its own temporary folder and renames it to ``out_dir``. The
    rename is atomic, so ``out_dir`` is either absent or complete; a process that loses the race
    drops its copy, which is identical since generation is deterministic.
    """
    json_file = os.path.join(out_dir, "annotations.json")
    if os.path.isfile(json_file):
        return json_file
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    logger.info(f"Generating {num_images} shapes images (seed {seed}) into {out_dir} ...")
    tmp_dir = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    os.chmod(tmp_dir, 0o755)  # mkdtemp's 0o700 would hide a shared cache from other users.
    try:
        generate_shapes(tmp_dir, num_images, seed)
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not os.path.isfile(json_file):
                raise
    finally:
        if os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir)
    return json_file


def _load_shapes(name: str, out_dir: str, num_images: int, seed: int) -> List[Dict[str, Any]]:
    json_file = ensure_shapes(out_dir, num_images, seed)
    return load_coco_json(json_file, os.path.join(out_dir, "images"), name)


def register_builtin_datasets(cache_root: Optional[str] = None) -> None:
    """Register ``shapes_train`` and ``shapes_val`` with their files under ``cache_root``
    (default: :func:`default_cache_root`).

    Nothing is generated here: the images are written on the first ``DatasetCatalog.get``, and
    reused afterwards. Calling this again with another cache root re-points both datasets there.
    """
    root = cache_root or default_cache_root()
    for name, split in SHAPES_DATASETS.items():
        num_images, seed = SHAPES_SPLITS[split]
        out_dir = os.path.join(root, f"shapes_{GENERATOR_VERSION}_{split}_n{num_images}_s{seed}")
        json_file = os.path.join(out_dir, "annotations.json")
        if name in DatasetCatalog:
            if MetadataCatalog.get(name).get("json_file") == json_file:
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name, functools.partial(_load_shapes, name, out_dir, num_images, seed)
        )
        # COCOEvaluator reads json_file. It exists once the dataset was loaded, which
        # DefaultTrainer.test does (build_test_loader) before it builds the evaluator.
        MetadataCatalog.get(name).set(
            thing_classes=list(SHAPES_CLASSES),
            evaluator_type="coco",
            json_file=json_file,
            image_root=os.path.join(out_dir, "images"),
        )


def _read_json(json_file: str) -> Any:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json file '{json_file}' does not exist.")
    try:
        with open(json_file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"'{json_file}' is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        ) from e
    except UnicodeDecodeError as e:
        raise ValueError(f"'{json_file}' is not a UTF-8 text file: {e}.") from e


def _check_top_level(data: Any, json_file: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"'{json_file}' must hold a JSON object, not {type(data).__name__}.")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(
                f"'{json_file}' has no top-level key '{key}': a COCO instances json needs "
                "'images', 'annotations' and 'categories'."
            )
        if not isinstance(data[key], list):
            raise ValueError(
                f"'{json_file}': '{key}' must be a list, not {type(data[key]).__name__}."
            )


def _check_entries(entries: List[Any], keys: List[str], what: str, json_file: str) -> None:
    """Every entry is an object with ``keys``, and the ids are unique."""
    seen = set()
    for index, entry in enumerate(entries):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ValueError(f"'{json_file}': {what} #{index} lacks {missing}: {entry!r:.200}.")
        if entry["id"] in seen:
            raise ValueError(f"'{json_file}': duplicate {what} id {entry['id']!r}.")
        seen.add(entry["id"])


def _thing_classes(data: Dict[str, Any], json_file: str) -> List[str]:
    """Category names in the order load_coco_json maps them to contiguous ids (sorted by id)."""
    categories = data["categories"]
    _check_entries(categories, ["id", "name"], "category", json_file)
    if not categories:
        raise ValueError(f"'{json_file}' has an empty 'categories' list.")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def _check_coco(data: Any, json_file: str) -> None:
    """Raise a ValueError for json that load_coco_json or training would choke on later."""
    _check_top_level(data, json_file)
    _thing_classes(data, json_file)
    _check_entries(data["images"], ["id", "file_name", "height", "width"], "image", json_file)
    _check_entries(data["annotations"], ["id", "image_id", "category_id"], "annotation", json_file)
    image_ids = {image["id"] for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for ann in data["annotations"]:
        where = f"'{json_file}': annotation {ann['id']!r}"
        if ann["image_id"] not in image_ids:
            raise ValueError(
                f"{where} refers to image_id {ann['image_id']!r}, which is not in 'images'."
            )
        if ann["category_id"] not in category_ids:
            raise ValueError(
                f"{where} refers to category_id {ann['category_id']!r}, which is not in "
                "'categories'."
            )
        segmentation = ann.get("segmentation")
        if not (
            segmentation is None
            or isinstance(segmentation, dict)
            or (isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation))
        ):
            raise ValueError(f"{where} needs 'segmentation' as a list of polygons or an RLE dict.")
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, (int, float)) for v in bbox)
        ):
            raise ValueError(
                f"{where} needs 'bbox' as 4 numbers [x, y, width, height], got {bbox!r}."
            )


def load_coco_json_checked(
    json_file: str, image_root: str, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """detectron2's ``load_coco_json`` after validating the json (see ``_check_coco``).

    Non-crowd annotations that cannot train an instance mask are dropped with one warning: an
    empty box (width or height <= 0) or no polygon with at least 3 points. Images left without
    annotations are kept; DATALOADER.FILTER_EMPTY_ANNOTATIONS decides about them.
    """
    data = _read_json(json_file)
    _check_coco(data, json_file)
    dataset_dicts = load_coco_json(json_file, image_root, dataset_name)

    num_empty_boxes = num_no_polygon = 0
    for record in dataset_dicts:
        kept = []
        for obj in record["annotations"]:
            if not obj.get("iscrowd", 0):
                if obj["bbox"][2] <= 0 or obj["bbox"][3] <= 0:
                    num_empty_boxes += 1
                    continue
                if not obj.get("segmentation"):
                    num_no_polygon += 1
                    continue
            kept.append(obj)
        record["annotations"] = kept
    # load_coco_json already dropped (and counted) annotations whose polygons all have < 3 points.
    num_no_polygon += sum(
        1
        for ann in data["annotations"]
        if isinstance(ann.get("segmentation"), list)
        and ann["segmentation"]
        and not any(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"]
        )
    )
    if num_empty_boxes or num_no_polygon:
        logger.warning(
            f"'{json_file}': skipped {num_empty_boxes} annotations with an empty box (width or "
            f"height <= 0) and {num_no_polygon} without a polygon of at least 3 points."
        )
    return dataset_dicts


def register_custom_coco(cfg: CfgNode) -> None:
    """Register every [name, json_file, image_root] of ``cfg.DATASETS.CUSTOM_COCO``.

    Re-registering an identical entry is a no-op, so set-up code may run more than once.
    """
    for index, entry in enumerate(cfg.DATASETS.CUSTOM_COCO):
        where = f"DATASETS.CUSTOM_COCO[{index}]"
        if not (
            isinstance(entry, (list, tuple))
            and len(entry) == 3
            and all(isinstance(v, str) and v for v in entry)
        ):
            raise ValueError(
                f"{where} must be [name, json_file, image_root] (3 non-empty strings), "
                f"got {entry!r}."
            )
        name, json_file, image_root = entry
        if not os.path.isfile(json_file):
            raise ValueError(
                f"{where}: json_file '{json_file}' of dataset '{name}' does not exist."
            )
        if not os.path.isdir(image_root):
            raise ValueError(
                f"{where}: image_root '{image_root}' of dataset '{name}' is not a directory."
            )
        if name in DatasetCatalog:
            meta = MetadataCatalog.get(name)
            if meta.get("json_file") == json_file and meta.get("image_root") == image_root:
                continue
            raise ValueError(
                f"{where}: dataset name '{name}' is already registered (json_file="
                f"{meta.get('json_file')!r}, image_root={meta.get('image_root')!r}); "
                "choose another name."
            )
        DatasetCatalog.register(
            name, functools.partial(load_coco_json_checked, json_file, image_root, name)
        )
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco"
        )


def check_num_classes(cfg: CfgNode) -> None:
    """Fail at set-up, not mid-training, when MODEL.FCOS.NUM_CLASSES does not match a dataset.

    Datasets whose metadata lacks ``thing_classes`` but has a ``json_file`` (custom COCO ones
    before their first load) get it from the json's categories.
    """
    num_classes = cfg.MODEL.FCOS.NUM_CLASSES
    for key, names in (
        ("DATASETS.TRAIN", cfg.DATASETS.TRAIN),
        ("DATASETS.TEST", cfg.DATASETS.TEST),
    ):
        for name in names:
            if name not in DatasetCatalog:
                raise ValueError(
                    f"Dataset '{name}' in {key} is not registered. Use a registered name "
                    "(DatasetCatalog.list()) or add [name, json_file, image_root] to "
                    "DATASETS.CUSTOM_COCO."
                )
            meta = MetadataCatalog.get(name)
            if not meta.get("thing_classes") and meta.get("json_file"):
                data = _read_json(meta.json_file)
                _check_top_level(data, meta.json_file)
                meta.thing_classes = _thing_classes(data, meta.json_file)
            classes = meta.get("thing_classes")
            if classes is not None and len(classes) != num_classes:
                raise ValueError(
                    f"Dataset '{name}' (in {key}) has {len(classes)} categories but "
                    f"MODEL.FCOS.NUM_CLASSES is {num_classes}. Set MODEL.FCOS.NUM_CLASSES "
                    f"{len(classes)} in the config file or on the command line."
                )
