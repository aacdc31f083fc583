"""Where the cells of a stride-s feature map sit in input pixels: the two conventions the package
uses, side by side, so that no module re-derives either.

* FCOS's: cell k is at pixel ``s*k + s//2``, the middle of its s x s patch. Regression targets,
  relative coordinates of the mask head and the instance pixels of the query bank use it, as
  AdelaiDet does, so that its checkpoints and targets carry over.
* The network's: a CNN whose strided layers have centred kernels ("same" padding, as
  detectron2's ResNets) computes cell k from the neighbourhood of pixel ``s*k``, whose centre is
  the continuous point ``s*k + 0.5``. Warping features between an image and its flipped or
  rescaled view must use this one; FCOS's would put a flipped view's features s/2 - 1 pixels
  off (7 at stride 8).
"""

import torch
from torch import Tensor

__all__ = ["PIXEL_CENTER", "fcos_cell_center", "fcos_cell_centers", "network_cell_center"]

# Continuous coordinate of the centre of pixel p is p + PIXEL_CENTER.
PIXEL_CENTER = 0.5


def fcos_cell_center(index: Tensor, stride: int) -> Tensor:
    """Input pixel that FCOS places cell ``index`` (along one axis) at."""
    return index * stride + stride // 2


def fcos_cell_centers(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """(x, y) of the cells of a [height, width] map in FCOS's convention, row-major,
    [height * width, 2] float32."""
    xs = fcos_cell_center(torch.arange(width, dtype=torch.float32, device=device), stride)
    ys = fcos_cell_center(torch.arange(height, dtype=torch.float32, device=device), stride)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def network_cell_center(index: Tensor, stride: int) -> Tensor:
    """Continuous input coordinate that cell ``index`` (along one axis) is centred on."""
    return stride * index + PIXEL_CENTER
