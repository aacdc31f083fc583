"""COCO instances json to detectron2 dataset dicts, checked, from a single parse of the file.

detectron2's ``load_coco_json`` takes a path and parses it itself (through pycocotools), so a
loader that validates the json first would read every file twice. Here the json is parsed once
and the same object is checked (``coco_validation``) and converted.
"""

import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Optional

import pycocotools.mask as mask_util
from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from .coco_validation import check_coco, coco_thing_classes, read_json

__all__ = ["coco_dataset_dicts", "first_maskless_annotation", "load_coco_json_checked"]

logger = logging.getLogger(__name__)

# Annotation keys copied into the dataset dicts; keypoints are not read (CondInst has no
# keypoint head).
_ANNOTATION_KEYS = ("iscrowd", "bbox", "category_id")


def load_coco_json_checked(
    json_file: str, image_root: str, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """The dataset dicts of ``json_file`` (see :func:`coco_dataset_dicts`), parsed once."""
    return coco_dataset_dicts(read_json(json_file), json_file, image_root, dataset_name)


def coco_dataset_dicts(
    data: Any,
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    checked: bool = False,
) -> List[Dict[str, Any]]:
    """What detectron2's ``load_coco_json(json_file, image_root, dataset_name)`` returns, made
    from ``data``, the parsed ``json_file``, after :func:`check_coco` (skipped when ``checked``:
    the caller ran it on ``data``, as set-up does, and checking RLE costs ~0.1 ms a mask).

    As there, images are sorted by id, and with a ``dataset_name`` its metadata gets
    ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` and the category ids become
    contiguous (without one they stay the json's). Annotations whose polygons all have fewer
    than 3 points are dropped, and so are, unlike there, non-crowd annotations that cannot
    train an instance mask: an empty box (width or height <= 0) or no segmentation. One warning
    counts them. Images left without annotations are kept; DATALOADER.FILTER_EMPTY_ANNOTATIONS
    decides about them.

    A json in which no non-crowd annotation has a segmentation is a box-only dataset: its
    annotations are kept without masks, for box-supervised training (MODEL.BOXINST.ENABLED);
    set-up refuses it for a mask-supervised model (``datasets.choose_mask_format``).
    """
    if not checked:
        check_coco(data, json_file)
    id_map = None
    if dataset_name is not None:
        id_map = {c: i for i, c in enumerate(sorted(c["id"] for c in data["categories"]))}
        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = coco_thing_classes(data, json_file)
        meta.thing_dataset_id_to_contiguous_id = id_map

    annotations = defaultdict(list)
    for ann in data["annotations"]:
        annotations[ann["image_id"]].append(ann)
    skipped = {"empty box": 0, "no polygon": 0}
    box_only = first_maskless_annotation(data) is not None
    dataset_dicts = []
    for image in sorted(data["images"], key=lambda image: image["id"]):
        objs = (_instance(ann, id_map, skipped, box_only) for ann in annotations[image["id"]])
        dataset_dicts.append(
            {
                "file_name": os.path.join(image_root, image["file_name"]),
                "height": image["height"],
                "width": image["width"],
                "image_id": image["id"],
                "annotations": [obj for obj in objs if obj is not None],
            }
        )
    logger.info(f"Loaded {len(dataset_dicts)} images in COCO format from {json_file}")
    if box_only:
        logger.info(f"'{json_file}' has boxes and no masks: loaded for box-supervised training")
    if any(skipped.values()):
        logger.warning(
            f"'{json_file}': skipped {skipped['empty box']} annotations with an empty box (width "
            f"or height <= 0) and {skipped['no polygon']} without a polygon of at least 3 points."
        )
    return dataset_dicts


def first_maskless_annotation(data: Any) -> Optional[Dict[str, Any]]:
    """In parsed COCO json ``data`` that is box-only (no non-crowd annotation has a
    segmentation), its first non-crowd annotation; None for any other json."""
    first = None
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        if ann.get("segmentation"):
            return None
        first = first or ann
    return first


def _instance(
    ann: Dict[str, Any],
    id_map: Optional[Dict[Any, int]],
    skipped: Dict[str, int],
    box_only: bool = False,
) -> Optional[Dict[str, Any]]:
    """The dataset-dict annotation of ``ann``, or None (counted in ``skipped``) when it is
    dropped. In a ``box_only`` json an annotation without segmentation is kept (a box)."""
    obj = {key: ann[key] for key in _ANNOTATION_KEYS if key in ann}
    segmentation = ann.get("segmentation")
    if segmentation:
        if isinstance(segmentation, dict):
            if isinstance(segmentation["counts"], list):  # uncompressed RLE
                segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
        else:
            segmentation = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
            if not segmentation:
                skipped["no polygon"] += 1
                return None
        obj["segmentation"] = segmentation
    if not obj.get("iscrowd", 0):
        if obj["bbox"][2] <= 0 or obj["bbox"][3] <= 0:
            skipped["empty box"] += 1
            return None
        if "segmentation" not in obj and not box_only:
            skipped["no polygon"] += 1
            return None
    obj["bbox_mode"] = BoxMode.XYWH_ABS
    if id_map is not None:
        obj["category_id"] = id_map[obj["category_id"]]
    return obj
