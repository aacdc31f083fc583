"""The embedded synthetic datasets (shapes, cells): generated on their first load into a cache
folder, registered as ``<name>_<split>``, loaded by the checked COCO loader."""

import functools
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from .cells import CELLS_CLASSES, CELLS_SPLITS, generate_cells
from .cells import GENERATOR_VERSION as CELLS_VERSION
from .coco_loader import load_coco_json_checked
from .shapes import GENERATOR_VERSION, SHAPES_CLASSES, SHAPES_SPLITS, generate_shapes

__all__ = [
    "SHAPES_DATASETS",
    "SYNTHETIC_DATASETS",
    "SyntheticDataset",
    "default_cache_root",
    "ensure_generated",
    "ensure_shapes",
    "register_builtin_datasets",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticDataset:
    """An embedded generated dataset: registered as ``<name>_<split>`` for each split."""

    name: str
    classes: Tuple[str, ...]
    splits: Dict[str, Tuple[int, int]]  # split -> (number of images, seed)
    version: str  # part of the cache folder: a new generator never reuses old files
    generate: Callable[[str, int, int], str]  # (out_dir, num_images, seed) -> json path


SYNTHETIC_DATASETS = (
    SyntheticDataset("shapes", SHAPES_CLASSES, SHAPES_SPLITS, GENERATOR_VERSION, generate_shapes),
    SyntheticDataset("cells", CELLS_CLASSES, CELLS_SPLITS, CELLS_VERSION, generate_cells),
)
# Registered dataset name -> shapes split.
SHAPES_DATASETS = {f"shapes_{split}": split for split in SHAPES_SPLITS}


def default_cache_root() -> str:
    """Where generated datasets live: $IUQ_D2_CACHE, else ~/.cache/iuq_d2."""
    return os.environ.get("IUQ_D2_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "iuq_d2"
    )


def ensure_generated(
    out_dir: str, num_images: int, seed: int, generate: Callable[[str, int, int], str]
) -> str:
    """Generate a synthetic dataset into ``out_dir`` unless it is there; return its json path.

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
    logger.info(f"Generating {num_images} images (seed {seed}) into {out_dir} ...")
    tmp_dir = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    os.chmod(tmp_dir, 0o755)  # mkdtemp's 0o700 would hide a shared cache from other users.
    try:
        generate(tmp_dir, num_images, seed)
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not os.path.isfile(json_file):
                raise
    finally:
        if os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir)
    return json_file


def ensure_shapes(out_dir: str, num_images: int, seed: int) -> str:
    """:func:`ensure_generated` for the shapes dataset."""
    return ensure_generated(out_dir, num_images, seed, generate_shapes)


def _load_generated(
    name: str, out_dir: str, num_images: int, seed: int, generate: Callable[[str, int, int], str]
) -> List[Dict[str, Any]]:
    json_file = ensure_generated(out_dir, num_images, seed, generate)
    return load_coco_json_checked(json_file, os.path.join(out_dir, "images"), name)


def register_builtin_datasets(cache_root: Optional[str] = None) -> None:
    """Register every split of the synthetic datasets (``shapes_train``, ``shapes_val``,
    ``cells_train``, ``cells_val``) with their files under ``cache_root`` (default:
    :func:`default_cache_root`).

    Nothing is generated here: the images are written on the first ``DatasetCatalog.get``, and
    reused afterwards. Calling this again with another cache root re-points the datasets there.
    """
    root = cache_root or default_cache_root()
    for dataset in SYNTHETIC_DATASETS:
        for split, (num_images, seed) in dataset.splits.items():
            name = f"{dataset.name}_{split}"
            folder = f"{dataset.name}_{dataset.version}_{split}_n{num_images}_s{seed}"
            out_dir = os.path.join(root, folder)
            json_file = os.path.join(out_dir, "annotations.json")
            if name in DatasetCatalog:
                if MetadataCatalog.get(name).get("json_file") == json_file:
                    continue
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(
                name,
                functools.partial(
                    _load_generated, name, out_dir, num_images, seed, dataset.generate
                ),
            )
            # COCOEvaluator reads json_file. It exists once the dataset was loaded, which
            # DefaultTrainer.test does (build_test_loader) before it builds the evaluator.
            MetadataCatalog.get(name).set(
                thing_classes=list(dataset.classes),
                mask_encodings=["polygon"],
                evaluator_type="coco",
                json_file=json_file,
                image_root=os.path.join(out_dir, "images"),
            )
