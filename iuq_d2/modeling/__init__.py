from .backbone import build_fcos_resnet_fpn_backbone
from .condinst import CondInst
from .fcos import FCOS
from .iuq import IUQCondInst

__all__ = ["CondInst", "FCOS", "IUQCondInst", "build_fcos_resnet_fpn_backbone"]
