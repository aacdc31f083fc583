from .dynamic_mlp import dynamic_layer_shapes, dynamic_mlp, num_dynamic_params, parse_dynamic_params
from .losses import dice_loss, ltrb_iou_loss
from .upsample import aligned_bilinear

__all__ = [
    "aligned_bilinear",
    "dice_loss",
    "dynamic_layer_shapes",
    "dynamic_mlp",
    "ltrb_iou_loss",
    "num_dynamic_params",
    "parse_dynamic_params",
]
