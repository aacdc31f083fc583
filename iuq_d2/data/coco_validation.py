"""Checks of a parsed COCO instances json, raising errors that name the file and the offending
entry, so that malformed annotations fail at load time and not inside a training step.

The functions take the parsed json, never a path to read: the caller parses the file once and
hands the same object to the checks and to the conversion into dataset dicts.
"""

import json
import os
from typing import Any, Dict, List, Optional

__all__ = ["check_coco", "coco_thing_classes", "read_json", "rle_string_counts"]


def read_json(json_file: str) -> Any:
    """Parse ``json_file``, with errors that name it (and the line and column of bad JSON)."""
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


def coco_thing_classes(data: Any, json_file: str) -> List[str]:
    """The category names of parsed COCO json ``data``, sorted by category id: the order in
    which the loader maps ids to contiguous class ids. Checks only what this needs (the top level
    and the categories), so that a class count costs no full validation."""
    _check_top_level(data, json_file)
    categories = data["categories"]
    _check_entries(categories, ["id", "name"], "category", json_file)
    if not categories:
        raise ValueError(f"'{json_file}' has an empty 'categories' list.")
    return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]


def rle_string_counts(counts: str) -> Optional[List[int]]:
    """The run lengths of a compressed COCO RLE string, or None where it is not one.

    pycocotools' own decoder reads past a truncated string and leaves pixels unwritten when the
    runs fall short of the mask, so a bad string can decode into garbage instead of failing;
    this is its ``rleFrString`` in Python, for a check of the runs without decoding a mask.
    """
    runs: List[int] = []
    value = shift = 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code < 64:
            return None
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:  # more 5-bit groups follow
            continue
        if code & 0x10:  # sign bit of the last group
            value -= 1 << shift
        if len(runs) > 2:  # runs after the third are stored relative to the run two before
            value += runs[-2]
        runs.append(value)
        value = shift = 0
    return None if shift else runs


def _rle_problem(segmentation: Dict[str, Any], height: int, width: int) -> Optional[str]:
    """Why the RLE dict ``segmentation`` of an image of ``height`` x ``width`` cannot train a
    mask, or None when it can."""
    missing = [key for key in ("counts", "size") if key not in segmentation]
    if missing:
        return f"it lacks {missing}"
    size, counts = segmentation["size"], segmentation["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        return f"'size' must be [height, width], got {size!r:.100}"
    if size != [height, width]:
        return f"'size' {size} is not the image's [height, width] [{height}, {width}]"
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            return "its compressed 'counts' string does not decode"
    elif isinstance(counts, list) and all(isinstance(v, int) for v in counts):
        runs = counts
    else:
        return (
            "'counts' must be a string (compressed RLE) or a list of integers (uncompressed), "
            f"got {counts!r:.100}"
        )
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        return f"its 'counts' do not decode into the {height * width} pixels of the image"
    return None


def _check_segmentation(segmentation: Any, image: Dict[str, Any], where: str) -> None:
    if segmentation is None or (
        isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation)
    ):
        return
    if not isinstance(segmentation, dict):
        raise ValueError(
            f"{where} needs 'segmentation' as a list of polygons or an RLE dict with 'counts' "
            "and 'size'."
        )
    problem = _rle_problem(segmentation, image["height"], image["width"])
    if problem is not None:
        raise ValueError(
            f"{where} has an RLE 'segmentation' that cannot be used: {problem}. Fix the "
            "annotation or leave the file out of DATASETS.CUSTOM_COCO."
        )


def _check_bbox(bbox: Any, where: str) -> None:
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
    ):
        raise ValueError(f"{where} needs 'bbox' as 4 numbers [x, y, width, height], got {bbox!r}.")


def check_coco(data: Any, json_file: str) -> None:
    """Raise a ValueError naming ``json_file`` for parsed json that the loader or training would
    choke on later: a missing list or key, a duplicate id, an annotation of an unknown image or
    category, an ``ignore`` flag, a malformed box or segmentation (an RLE one included: its
    size must be the image's and its runs must cover exactly the image's pixels)."""
    coco_thing_classes(data, json_file)
    _check_entries(data["images"], ["id", "file_name", "height", "width"], "image", json_file)
    _check_entries(data["annotations"], ["id", "image_id", "category_id"], "annotation", json_file)
    images = {image["id"]: image for image in data["images"]}
    category_ids = {category["id"] for category in data["categories"]}
    for ann in data["annotations"]:
        where = f"'{json_file}': annotation {ann['id']!r}"
        if ann["image_id"] not in images:
            raise ValueError(
                f"{where} refers to image_id {ann['image_id']!r}, which is not in 'images'."
            )
        if ann["category_id"] not in category_ids:
            raise ValueError(
                f"{where} refers to category_id {ann['category_id']!r}, which is not in "
                "'categories'."
            )
        if ann.get("ignore", 0):
            raise ValueError(
                f"{where} has 'ignore' set, which is not supported: mark such a "
                "region 'iscrowd': 1 instead."
            )
        _check_segmentation(ann.get("segmentation"), images[ann["image_id"]], where)
        _check_bbox(ann.get("bbox"), where)
