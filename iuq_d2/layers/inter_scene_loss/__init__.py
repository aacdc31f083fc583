"""The inter-scene (dataset-level) uniqueness loss, and the one place that picks its
implementation.

Every query's dynamic mask head is evaluated on instance pixels ("entries") of *other* images;
each such pair is a negative, penalised with a sigmoid focal loss against target 0 (the
paper's). The implementations share the pair weights (``pairs``) and the folding of the
relative coordinates into the first layer (``dynamic_mlp.fold_dynamic_params``):

* ``reference``: the plain PyTorch graph with [Q, hidden, N] intermediates;
* ``tiled``: entries in chunks, gradients computed during the forward, any device;
* ``triton_kernels``: a fused kernel for the 3-layer head on CUDA (``triton`` is optional).
"""

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..dynamic_mlp import autocast_off
from ..triton_support import IMPLS, FirstUseCheck, compare_paths, resolve_impl
from .pairs import NORMALIZATIONS, InterSceneStats, focal_and_grad, inter_scene_weights
from .reference import reference_inter_scene_focal_loss, reference_pair_logits
from .tiled import tiled_inter_scene_focal_loss
from .triton_kernels import triton_inter_scene_focal_loss


def _check_triton_inter_scene(
    params: Tensor,
    pixel_feats: Tensor,
    layer_shapes: List[Tuple[int, int]],
    use_rel_coords: bool,
    normalization: str,
) -> FirstUseCheck:
    """The Triton path against the tiled one, loss and gradient, on a small problem of the real
    channels, layers, dtypes and device."""

    def check() -> Optional[str]:
        g = torch.Generator().manual_seed(0)
        device = params.device
        p = torch.randn(4, params.shape[1], generator=g) * 0.3
        f = torch.randn(40, pixel_feats.shape[1], generator=g).to(device, pixel_feats.dtype)
        args = (
            (torch.rand(4, 2, generator=g) * 100).to(device),
            torch.full((4,), 64.0, device=device),
            torch.tensor([0, 0, 1, 2], device=device),
            f,
            (torch.rand(40, 2, generator=g) * 100).to(device),
            torch.randint(0, 4, (40,), generator=g).to(device),
            layer_shapes,
            use_rel_coords,
        )
        results = []
        with torch.enable_grad(), autocast_off(device):
            for path in (triton_inter_scene_focal_loss, tiled_inter_scene_focal_loss):
                pp = p.to(device, params.dtype).requires_grad_()
                loss, _ = path(pp, *args, normalization=normalization)
                results.append([loss, *torch.autograd.grad(loss, [pp])])
        return compare_paths("inter-scene loss", *results)

    return check


def inter_scene_focal_loss(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    query_images: Tensor,
    pixel_feats: Tensor,
    pixel_anchors: Tensor,
    pixel_images: Tensor,
    layer_shapes: List[Tuple[int, int]],
    use_rel_coords: bool = True,
    alpha: float = 0.25,
    gamma: float = 2.0,
    normalization: str = "pairs",
    impl: str = "auto",
    chunk_elems: Optional[int] = None,
) -> Tuple[Tensor, InterSceneStats]:
    """Focal loss (target 0) of every query on every entry of another image.

    The relative coordinates of the pair (q, n) are ``(query_anchors[q] - pixel_anchors[n]) /
    query_soi[q]``; the caller picks the anchors that implement "instance_centered" or
    "overlay" placement.

    Args:
        params: [Q, P] dynamic mask head parameters of the queries (get gradient).
        query_anchors: [Q, 2]; query_soi: [Q] size of interest of each query's FPN level;
        query_images: [Q] int64 id of each query's source image.
        pixel_feats: [N, C] mask features; pixel_anchors: [N, 2]; pixel_images: [N] int64.
            Entries, anchors and sizes of interest are constants (no gradient).
        layer_shapes: (out, in) per dynamic layer, the first taking ``2 + C`` inputs when
            ``use_rel_coords`` else ``C``.
        normalization: "pairs" (mean over valid pairs) or "query_image" (the paper's; see
            ``inter_scene_weights``).
        impl: "reference", "tiled", "triton" (CUDA tensors only) or "auto".
        chunk_elems: tiled path only: about how many floats one [Q, hidden, T] chunk holds.
    Returns:
        the loss (0 with the graph kept when no pair is valid) and statistics without gradient.
    """
    pixel_feats = pixel_feats.detach()
    c_in = pixel_feats.shape[1] + (2 if use_rel_coords else 0)
    check = _check_triton_inter_scene(
        params, pixel_feats, layer_shapes, use_rel_coords, normalization
    )
    impl = resolve_impl(impl, params, layer_shapes, c_in, "inter-scene loss", check)
    args = (
        params,
        query_anchors,
        query_soi,
        query_images,
        pixel_feats,
        pixel_anchors,
        pixel_images,
        layer_shapes,
        use_rel_coords,
        alpha,
        gamma,
        normalization,
    )
    if impl == "reference":
        return reference_inter_scene_focal_loss(*args)
    if impl == "tiled":
        return tiled_inter_scene_focal_loss(*args, chunk_elems=chunk_elems)
    return triton_inter_scene_focal_loss(*args)


__all__ = [
    "IMPLS",
    "NORMALIZATIONS",
    "InterSceneStats",
    "focal_and_grad",
    "inter_scene_focal_loss",
    "inter_scene_weights",
    "reference_inter_scene_focal_loss",
    "reference_pair_logits",
    "resolve_impl",
    "tiled_inter_scene_focal_loss",
]
