"""The dataset mapper of iuq_d2's CondInst, for training and test."""

from typing import Any, Dict, List, Tuple

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, PolygonMasks

__all__ = ["CondInstDatasetMapper"]


def _copy_for_transform(annotation: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``annotation`` that detectron2's ``transform_instance_annotations`` can change
    without touching the dataset's dict, with float coordinates.

    That function assigns new values to the dict's keys, but flips and resizes the arrays it
    makes of the box, polygons and keypoints in place. An array of the dataset would change,
    and integer coordinates (a json that stores them as ints) would be truncated at every
    transform. A ``copy.deepcopy`` instead copied every coordinate as a Python object (a third
    of the demo's data loading time under cProfile, which inflates Python-heavy code).
    """
    annotation = dict(annotation)
    annotation["bbox"] = [float(x) for x in annotation["bbox"]]  # BoxMode.convert takes lists
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list):
        annotation["segmentation"] = [np.array(p, dtype=np.float64) for p in segmentation]
    if "keypoints" in annotation:
        annotation["keypoints"] = np.array(annotation["keypoints"], dtype=np.float64)
    return annotation


class CondInstDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper (same config and arguments) with errors that name the image,
    and with ``__call__`` split into :meth:`load_image`, :meth:`augment` and
    :meth:`annotations_to_instances`, so that a subclass can build further views of one image
    (e.g. a second augmentation for instance-unique querying) from the same pieces.

    Sem-seg files and precomputed proposals, which CondInst does not use, are not read.
    """

    # Whether training outputs carry the equivariance view g(I) under "view" (see
    # IUQDatasetMapper), which IUQCondInst's equivariance losses read.
    makes_views = False

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        """detectron2's arguments, less the training flip where INPUT.HFLIP_TRAIN (AdelaiDet's
        switch) is False, and without masks for BoxInst (MODEL.BOXINST.ENABLED), which trains
        on boxes: its instances carry none, and a crop keeps the cropped boxes, as AdelaiDet's."""
        ret = super().from_config(cfg, is_train)
        if cfg.MODEL.BOXINST.ENABLED:
            ret["use_instance_mask"] = False
            ret["recompute_boxes"] = False
        if is_train and not cfg.INPUT.HFLIP_TRAIN:
            ret["augmentations"] = [
                a for a in ret["augmentations"] if not isinstance(a, T.RandomFlip)
            ]
        return ret

    def load_image(self, dataset_dict: Dict[str, Any]) -> np.ndarray:
        """Read the image of ``dataset_dict`` in ``self.image_format`` and check its size
        against the dict's width/height."""
        file_name = dataset_dict["file_name"]
        where = f"image '{file_name}' (image_id {dataset_dict.get('image_id')!r})"
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"Cannot find {where}.") from e
        except OSError as e:  # PIL raises subclasses for corrupt or unknown formats.
            raise FileNotFoundError(f"Cannot read {where}: {e}") from e
        utils.check_image_size(dataset_dict, image)
        return image

    def augment(self, image: np.ndarray) -> Tuple[np.ndarray, T.TransformList]:
        """Apply ``self.augmentations``; return the new image and the transforms that made it."""
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        return aug_input.image, transforms

    def annotations_to_instances(
        self,
        annotations: List[Dict[str, Any]],
        transforms: T.TransformList,
        image_shape: Tuple[int, int],
    ) -> Instances:
        """Ground truth Instances (gt_boxes, gt_classes, gt_masks) of the non-crowd annotations
        in a view made by ``transforms``; instances left empty by the transforms are dropped.

        ``annotations`` are not modified, so they can serve several views.
        """
        annos = []
        for obj in annotations:
            if obj.get("iscrowd", 0):
                continue
            if self.use_instance_mask and "segmentation" not in obj:
                raise ValueError(
                    f"An annotation (bbox {obj.get('bbox')}) has no 'segmentation', but the "
                    "model trains on instance masks (MODEL.MASK_ON): set MODEL.BOXINST.ENABLED "
                    "True to train BoxInst on boxes, or add masks to the dataset"
                )
            obj = _copy_for_transform(obj)
            if not self.use_instance_mask:
                obj.pop("segmentation", None)
            if not self.use_keypoint:
                obj.pop("keypoints", None)
            if isinstance(obj.get("segmentation"), dict) and self.instance_mask_format == "polygon":
                raise ValueError(
                    "An annotation has an RLE mask, which INPUT.MASK_FORMAT 'polygon' cannot "
                    "hold: set INPUT.MASK_FORMAT bitmask (set-up chooses it from the data only "
                    "for DATASETS.CUSTOM_COCO and built-in datasets)"
                )
            annos.append(
                utils.transform_instance_annotations(
                    obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
                )
            )
        instances = utils.annotations_to_instances(
            annos, image_shape, mask_format=self.instance_mask_format
        )
        # annotations_to_instances adds no masks when there is no annotation; an empty field keeps
        # the fields of all images alike, so that the model can concatenate them.
        if self.use_instance_mask and not instances.has("gt_masks"):
            if self.instance_mask_format == "polygon":
                instances.gt_masks = PolygonMasks([])
            else:
                instances.gt_masks = BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
        # Set when cropping: a cropped object's box is no longer the crop of its old box.
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        instances = utils.filter_empty_instances(instances)
        # That keeps a polygon mask with points but no area (collinear, or made so by a crop),
        # which would train its instance towards an empty mask.
        if instances.has("gt_masks") and isinstance(instances.gt_masks, PolygonMasks):
            instances = instances[instances.gt_masks.area() > 0]
        return instances

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Return the dict with "image" (CHW uint8 tensor) and, in training, "instances"."""
        # A shallow copy suffices: only top-level keys are set or popped here, and
        # annotations_to_instances copies the annotations it transforms.
        dataset_dict = dict(dataset_dict)
        image, transforms = self.augment(self.load_image(dataset_dict))
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        annotations = dataset_dict.pop("annotations", None)
        if self.is_train and annotations is not None:
            try:
                dataset_dict["instances"] = self.annotations_to_instances(
                    annotations, transforms, image.shape[:2]
                )
            except ValueError as e:
                name, image_id = dataset_dict["file_name"], dataset_dict.get("image_id")
                raise ValueError(f"image '{name}' (image_id {image_id!r}): {e}") from e
        return dataset_dict
