"""The training mapper of IUQ's equivariance: every image comes with a geometric view g(I)."""

import importlib.util
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import Instances

from .mapper import CondInstDatasetMapper
from .view_alignment import view_alignment_of_config
from .views import sample_view_transforms, transform_to_affine

__all__ = ["IUQDatasetMapper"]


class IUQDatasetMapper(CondInstDatasetMapper):
    """:class:`CondInstDatasetMapper` that, in training, adds to each image I (after the usual
    augmentation) a view g(I) under the key "view":

    * "image": CHW uint8 tensor of g(I), unpadded;
    * "instances": the ground truth of g(I), transformed from the dataset's annotations by the
      augmentation followed by g, boxes tight around the masks; instances cropped away are
      dropped, so it may be empty;
    * "transforms": g, a TransformList (aligned crop, optional hflip, optional resize) of I;
    * "affine": float32 tensor [4] (sx, tx, sy, ty), x_view = sx * x + tx, y_view = sy * y + ty.

    Both I's and the view's Instances have ``gt_ids``: the index of the source annotation in the
    dataset dict, so that a view instance finds its instance of I. Photometric augmentations
    are not part of g. At test time this is the base mapper.
    """

    makes_views = True

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        view_crop_size: Tuple[float, float],
        view_scales: Sequence[float],
        view_flip_prob: float,
        view_align: int = 8,
        **kwargs,
    ):
        """
        Args:
            view_crop_size: (min, max) side of the crop relative to the image side, in (0, 1].
            view_scales: rescale factors of the view, one drawn uniformly per image.
            view_flip_prob: probability of a horizontal flip.
            view_align: the crop's offset is a multiple of it and its sides one more than a
                multiple (see ``sample_view_transforms``): the coarsest stride that feeds F,
                which ``from_config`` reads from the backbone's output shapes.
            kwargs: arguments of :class:`CondInstDatasetMapper`.
        """
        super().__init__(is_train, **kwargs)
        # detectron2 crops polygons with shapely; fail here rather than in a loader worker.
        if is_train and self.use_instance_mask and importlib.util.find_spec("shapely") is None:
            raise ImportError(
                "IUQDatasetMapper crops polygon masks, which needs shapely (pip install shapely)"
            )
        lo, hi = view_crop_size
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"view_crop_size (MODEL.IUQ.EQUI.CROP_SIZE) must satisfy "
                f"0 < min <= max <= 1, got {tuple(view_crop_size)}"
            )
        if len(view_scales) == 0 or min(view_scales) <= 0:
            raise ValueError(
                f"view_scales (MODEL.IUQ.EQUI.SCALES) must be positive factors, "
                f"got {tuple(view_scales)}"
            )
        if not 0.0 <= view_flip_prob <= 1.0:
            raise ValueError(
                f"view_flip_prob (MODEL.IUQ.EQUI.FLIP_PROB) must be in [0, 1], got {view_flip_prob}"
            )
        self.view_crop_size = (float(lo), float(hi))
        self.view_scales = tuple(float(s) for s in view_scales)
        self.view_flip_prob = float(view_flip_prob)
        self.view_align = int(view_align)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        equi = cfg.MODEL.IUQ.EQUI
        ret.update(
            view_crop_size=tuple(equi.CROP_SIZE),
            view_scales=tuple(equi.SCALES),
            view_flip_prob=equi.FLIP_PROB,
            view_align=view_alignment_of_config(cfg),
        )
        return ret

    def annotations_to_instances_with_ids(
        self,
        annotations: List[Dict[str, Any]],
        transforms: T.TransformList,
        image_shape: Tuple[int, int],
    ) -> Instances:
        """:meth:`annotations_to_instances` plus ``gt_ids``, the index in ``annotations`` of
        each instance kept."""
        # The ids travel through the base conversion as class ids, so that its crowd and
        # empty-instance filtering decides which ids survive; the classes are restored after.
        tagged = [dict(obj, category_id=index) for index, obj in enumerate(annotations)]
        classes = torch.as_tensor(
            [int(obj["category_id"]) for obj in annotations], dtype=torch.int64
        )
        instances = self.annotations_to_instances(tagged, transforms, image_shape)
        instances.gt_ids = instances.gt_classes
        instances.gt_classes = classes[instances.gt_ids]
        return instances

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        if not self.is_train:
            return super().__call__(dataset_dict)
        dataset_dict = dict(dataset_dict)
        image, transforms = self.augment(self.load_image(dataset_dict))
        view_transforms = sample_view_transforms(
            image.shape[:2],
            self.view_crop_size,
            self.view_scales,
            self.view_flip_prob,
            self.view_align,
        )
        view_image = view_transforms.apply_image(image)
        dataset_dict["image"] = _to_chw_tensor(image)
        view = {
            "image": _to_chw_tensor(view_image),
            "transforms": view_transforms,
            "affine": torch.tensor(
                transform_to_affine(view_transforms, image.shape[:2]), dtype=torch.float32
            ),
        }
        annotations = dataset_dict.pop("annotations", None)
        if annotations is not None:
            dataset_dict["instances"] = self.annotations_to_instances_with_ids(
                annotations, transforms, image.shape[:2]
            )
            view_instances = self.annotations_to_instances_with_ids(
                annotations, transforms + view_transforms, view_image.shape[:2]
            )
            # The crop cuts objects, and a cut object's box is not the crop of its box.
            if view_instances.has("gt_masks"):
                view_instances.gt_boxes = view_instances.gt_masks.get_bounding_boxes()
            view["instances"] = view_instances
        dataset_dict["view"] = view
        return dataset_dict


def _to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
