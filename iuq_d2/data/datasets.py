"""Registration of the COCO-format datasets listed in ``DATASETS.CUSTOM_COCO`` (loaded by the
checked COCO loader, ``coco_loader``), and the set-up steps that depend on the datasets: the
check of the class count and the choice of the mask format. The embedded synthetic datasets are
in ``builtin``.
"""

import logging
import os
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from .coco_loader import coco_dataset_dicts, first_maskless_annotation
from .coco_validation import check_coco, coco_thing_classes, read_json

__all__ = [
    "CustomCocoLoader",
    "check_num_classes",
    "choose_mask_format",
    "coco_mask_encodings",
    "register_custom_coco",
]

logger = logging.getLogger(__name__)


def coco_mask_encodings(data: Any) -> FrozenSet[str]:
    """The encodings, "polygon" and "rle", of the masks that train in parsed COCO json ``data``:
    those of non-crowd annotations (crowd regions are not trained on)."""
    return frozenset(
        "rle" if isinstance(ann["segmentation"], dict) else "polygon"
        for ann in data["annotations"]
        if ann.get("segmentation") and not ann.get("iscrowd", 0)
    )


class CustomCocoLoader:
    """The DatasetCatalog function of a ``DATASETS.CUSTOM_COCO`` entry, parsing its json once
    from set-up through the first load.

    The set-up steps need the json before any load: :func:`check_num_classes` its categories,
    :func:`choose_mask_format` its mask encodings. :meth:`thing_classes` and
    :meth:`mask_encodings` keep the parsed json for the next call, which converts it instead of
    parsing the file again. That call drops it, so later loads parse afresh, as does a load
    after the file changed (size or modification time). Until the first load the parsed json
    stays in memory: for a dataset only in DATASETS.TEST, until the first evaluation.
    """

    def __init__(self, json_file: str, image_root: str, dataset_name: str):
        self.json_file = json_file
        self.image_root = image_root
        self.dataset_name = dataset_name
        self._parsed: Optional[Tuple[Tuple[int, int], Any]] = None
        self._checked = False  # whether the kept parse passed check_coco

    def _stamp(self) -> Tuple[int, int]:
        stat = os.stat(self.json_file)
        return stat.st_size, stat.st_mtime_ns

    def _kept_parse(self) -> Any:
        """The parsed json, kept for the next load; parsed again unless the kept one is of the
        file as it is now."""
        stamp = self._stamp()
        if self._parsed is None or self._parsed[0] != stamp:
            self._parsed = (stamp, read_json(self.json_file))
            self._checked = False
        return self._parsed[1]

    def thing_classes(self) -> List[str]:
        """The category names sorted by id."""
        return coco_thing_classes(self._kept_parse(), self.json_file)

    def mask_encodings(self) -> FrozenSet[str]:
        """:func:`coco_mask_encodings` of the json, after its full check (:func:`check_coco`),
        so that a malformed annotation stops the run at set-up; the next load skips the check."""
        data = self._kept_parse()
        if not self._checked:
            check_coco(data, self.json_file)
            self._checked = True
        return coco_mask_encodings(data)

    def first_maskless_annotation(self) -> Optional[Dict[str, Any]]:
        """The first non-crowd annotation of a box-only json (none has a segmentation), else
        None (see :func:`coco_loader.first_maskless_annotation`)."""
        return first_maskless_annotation(self._kept_parse())

    def __call__(self) -> List[Dict[str, Any]]:
        data, checked = self._kept_parse(), self._checked
        self._parsed, self._checked = None, False
        return coco_dataset_dicts(
            data, self.json_file, self.image_root, self.dataset_name, checked=checked
        )


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
        DatasetCatalog.register(name, CustomCocoLoader(json_file, image_root, name))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco"
        )


def check_num_classes(cfg: CfgNode) -> None:
    """Fail at set-up, not mid-training, when MODEL.FCOS.NUM_CLASSES does not match a dataset.

    Datasets whose metadata lacks ``thing_classes`` but has a ``json_file`` (custom COCO ones
    before their first load) get it from the json's categories; a ``DATASETS.CUSTOM_COCO`` one
    keeps that parse for its first load (see :class:`CustomCocoLoader`).
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
            if not meta.get("thing_classes"):
                loader = DatasetCatalog[name]
                if isinstance(loader, CustomCocoLoader):
                    meta.thing_classes = loader.thing_classes()
                elif meta.get("json_file"):
                    data = read_json(meta.json_file)
                    meta.thing_classes = coco_thing_classes(data, meta.json_file)
            classes = meta.get("thing_classes")
            if classes is not None and len(classes) != num_classes:
                raise ValueError(
                    f"Dataset '{name}' (in {key}) has {len(classes)} categories but "
                    f"MODEL.FCOS.NUM_CLASSES is {num_classes}. Set MODEL.FCOS.NUM_CLASSES "
                    f"{len(classes)} in the config file or on the command line."
                )


def _mask_encodings(name: str) -> Optional[FrozenSet[str]]:
    """The mask encodings of registered dataset ``name`` (see :func:`choose_mask_format`), or
    None where they are not known without loading it."""
    loader = DatasetCatalog[name]
    if isinstance(loader, CustomCocoLoader):
        return loader.mask_encodings()
    encodings = MetadataCatalog.get(name).get("mask_encodings")
    return None if encodings is None else frozenset(encodings)


def _check_has_masks(name: str) -> None:
    """Raise a ValueError naming dataset ``name`` and its first annotation if it is a box-only
    ``DATASETS.CUSTOM_COCO`` dataset."""
    loader = DatasetCatalog[name]
    ann = loader.first_maskless_annotation() if isinstance(loader, CustomCocoLoader) else None
    if ann is None:
        return
    raise ValueError(
        f"Dataset '{name}' in DATASETS.TRAIN has boxes and no masks (its first annotation, "
        f"id {ann.get('id')!r} of image_id {ann.get('image_id')!r} in '{loader.json_file}', "
        "has no 'segmentation'), but the model trains on instance masks (MODEL.MASK_ON). Set "
        "MODEL.BOXINST.ENABLED True to train BoxInst on its boxes (configs/BoxInst), or add "
        "masks to the json."
    )


def choose_mask_format(cfg: CfgNode) -> None:
    """Set INPUT.MASK_FORMAT to "bitmask" when a dataset of DATASETS.TRAIN has RLE masks, which
    "polygon" cannot hold (the loader would fail in a worker); log the choice.

    Bitmasks take polygons and RLE alike, so mixed datasets train together, and RLE stays exact
    (polygons traced from it would not). A "polygon" config without RLE is kept: polygons are
    cheaper to crop and resize. The encodings come from the data, so every process chooses
    alike: a ``DATASETS.CUSTOM_COCO`` dataset's from its json, which is checked in full here,
    so that a malformed annotation fails at set-up; another dataset's from a ``mask_encodings``
    entry of its metadata (the built-in ones: polygons). A dataset with neither is left out;
    RLE masks of one fail in the mapper, with an error naming INPUT.MASK_FORMAT.
    Runs after :func:`check_num_classes`, which checks that the datasets are registered.

    A box-only ``DATASETS.CUSTOM_COCO`` training dataset (no annotation has a mask) is refused
    for a mask-supervised model (MODEL.MASK_ON without MODEL.BOXINST.ENABLED), with the
    dataset's name and its first annotation.
    """
    train = {name: _mask_encodings(name) for name in cfg.DATASETS.TRAIN}
    if cfg.MODEL.MASK_ON and not cfg.MODEL.BOXINST.ENABLED:
        for name in train:
            _check_has_masks(name)
    # Test loaders make no instances, but a malformed test json should fail here all the same.
    for name in cfg.DATASETS.TEST:
        if name not in train:
            _mask_encodings(name)
    found: Dict[str, List[str]] = {"rle": [], "polygon": [], "unknown": []}
    for name, encodings in train.items():
        if encodings is None:
            found["unknown"].append(name)
        for encoding in encodings or ():
            found[encoding].append(name)
    configured = cfg.INPUT.MASK_FORMAT
    if found["rle"]:
        cfg.INPUT.MASK_FORMAT = "bitmask"
    described = "; ".join(
        f"{what} in {names}"
        for what, names in (
            ("RLE masks", found["rle"]),
            ("polygons", found["polygon"]),
            ("masks of unknown encoding (no DATASETS.CUSTOM_COCO dataset)", found["unknown"]),
        )
        if names
    )
    logger.info(
        f"INPUT.MASK_FORMAT {cfg.INPUT.MASK_FORMAT!r} (configured {configured!r}) for "
        f"DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}: {described or 'no masks'}"
    )
