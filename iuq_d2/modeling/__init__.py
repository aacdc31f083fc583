from .backbone import build_fcos_resnet_fpn_backbone
from .condinst import CondInst
from .fcos import FCOS

__all__ = ["CondInst", "FCOS", "build_fcos_resnet_fpn_backbone"]
