from .condinst import CondInst, CondInstTrainOutputs
from .dynamic_mask_head import DynamicMaskHead
from .mask_branch import MaskBranch

__all__ = ["CondInst", "CondInstTrainOutputs", "DynamicMaskHead", "MaskBranch"]
