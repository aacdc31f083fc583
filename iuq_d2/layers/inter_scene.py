"""The inter-scene (dataset-level) uniqueness loss: PyTorch reference, shared pieces, dispatch.

Every query's dynamic mask head is evaluated on instance pixels ("entries") of *other* images;
each such pair is a negative, penalised with a sigmoid focal loss against target 0 (the
paper's), or with its probability where that reaches a threshold (``"confident"``, the loss of
the paper's released CondInst code).

Three implementations share the pair weights (``inter_scene_weights``) and the folding of the
relative coordinates into the first layer (``fold_dynamic_params``):

* ``reference``: the plain PyTorch graph with [Q, hidden, N] intermediates;
* ``tiled`` (``inter_scene_tiled``): entries in chunks, gradients computed during the forward,
  O(Q*P + N*C) memory, any device;
* ``triton`` (``inter_scene_triton``): a fused CUDA kernel; ``triton`` is optional.

``inter_scene_focal_loss`` is the one place that picks among them.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .dynamic_mlp import parse_dynamic_params

NORMALIZATIONS = ("pairs", "query_image")
IMPLS = ("auto", "reference", "tiled", "triton")
PAIR_LOSSES = ("focal", "confident")


@dataclass
class InterSceneStats:
    num_pairs: Tensor  # valid (query, pixel) pairs
    frac_firing: Tensor  # fraction of valid pairs with probability > 0.5


def inter_scene_weights(
    query_images: Tensor,
    pixel_images: Tensor,
    normalization: str = "pairs",
    dtype: torch.dtype = torch.float32,
    pair_mask: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-query weights [Q] and per-entry weights [N] that make the loss one weighted sum.

    ``loss = sum_{q,n} qw[q] * pw[n] * [img_q != img_n] * focal(q, n)``. Factorising the
    normalisation this way costs O(Q + N) and lets every implementation stream over pairs.

    * ``"pairs"``: the mean over valid pairs (qw = 1 / #valid pairs, pw = 1).
    * ``"query_image"``: per query, the mean over each other image's entries, then over those
      images, then over the queries that have any: pw[n] = 1 / #entries of n's image and
      qw[q] = 1 / (#queries with a valid pair * #entry images other than q's), 0 without one.

    ``pair_mask`` ([Q, N] bool), when given, further restricts the valid pairs; it needs
    ``"pairs"``, whose count is then taken over the pairs it keeps.

    Returns:
        qw, pw and the number of valid pairs (int64 scalar).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if pair_mask is not None and normalization != "pairs":
        raise ValueError("a pair mask needs normalization 'pairs'")
    num_q, num_n = query_images.numel(), pixel_images.numel()
    ids = torch.cat([query_images.reshape(-1), pixel_images.reshape(-1)])
    _, inverse = torch.unique(ids, return_inverse=True)
    q_ids, p_ids = inverse[:num_q], inverse[num_q:]
    num_ids = int(inverse.max()) + 1 if inverse.numel() else 0
    q_count = torch.bincount(q_ids, minlength=num_ids)
    p_count = torch.bincount(p_ids, minlength=num_ids)
    num_pairs = num_q * num_n - (q_count * p_count).sum()
    if pair_mask is not None:
        num_pairs = ((query_images[:, None] != pixel_images[None, :]) & pair_mask).sum()
    if normalization == "pairs":
        qw = (1.0 / num_pairs.clamp(min=1).to(dtype)).expand(num_q).contiguous()
        pw = torch.ones(num_n, dtype=dtype, device=ids.device)
    else:
        pw = 1.0 / p_count[p_ids].to(dtype)
        others = (p_count > 0).sum() - (p_count[q_ids] > 0).long()  # other images with entries
        has_other = others > 0
        denom = (has_other.sum().clamp(min=1) * others.clamp(min=1)).to(dtype)
        qw = torch.where(has_other, 1.0 / denom, torch.zeros((), dtype=dtype, device=ids.device))
    return qw, pw, num_pairs


def fold_dynamic_params(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool,
    dtype: torch.dtype,
) -> Tuple[List[Tensor], List[Tensor]]:
    """Per-layer weights [Q, out, in] and biases [Q, out] acting on shared entry inputs.

    With relative coordinates the first layer is linear in [rel, feats], rel = (a_q - a_n) / s_q,
    so W_c rel = W_c a_q / s_q - (W_c / s_q) a_n: the query part folds into the bias and the
    entry part into a weight on ``[pixel_anchors, pixel_feats]``, an input shared by all queries
    (a single GEMM for the reference; no per-pair coordinates in the fused paths). Differentiable
    in ``params``; O(Q * P).
    """
    weights, biases = parse_dynamic_params(params.to(dtype), list(layer_shapes))
    if use_rel_coords:
        w0, b0 = weights[0], biases[0]
        w_coord = w0[:, :, :2] / query_soi.to(dtype)[:, None, None]
        biases[0] = b0 + torch.bmm(w_coord, query_anchors.to(dtype)[:, :, None]).squeeze(2)
        weights[0] = torch.cat([-w_coord, w0[:, :, 2:]], dim=2)
    return weights, biases


def entry_inputs(
    pixel_feats: Tensor, pixel_anchors: Tensor, use_rel_coords: bool, dtype: torch.dtype
) -> Tensor:
    """[N, C_in] entry side of the folded first layer: ``[anchors, feats]`` or ``feats``."""
    inputs = pixel_feats.to(dtype)
    if use_rel_coords:
        inputs = torch.cat([pixel_anchors.to(dtype), inputs], dim=1)
    return inputs


def focal_loss_target0(logits: Tensor, alpha: float, gamma: float) -> Tensor:
    """(1 - alpha) * p^gamma * -log(1 - p), with -log(1 - p) = softplus(x)."""
    return (1.0 - alpha) * logits.sigmoid().pow(gamma) * F.softplus(logits)


def confident_firing(logits: Tensor, threshold: float) -> Tensor:
    """p * [p >= threshold]: only confident firing is penalised, and only until it is not."""
    prob = logits.sigmoid()
    return prob * (prob >= threshold)


def check_pair_loss(pair_loss: str) -> None:
    if pair_loss not in PAIR_LOSSES:
        raise ValueError(f"pair_loss must be one of {PAIR_LOSSES}, got {pair_loss!r}")


def pair_loss_fn(pair_loss: str, alpha: float, gamma: float, threshold: float):
    """The per-pair loss of a logit, as a function (autograd differentiates it)."""
    check_pair_loss(pair_loss)
    if pair_loss == "confident":
        return lambda logits: confident_firing(logits, threshold)
    return lambda logits: focal_loss_target0(logits, alpha, gamma)


def reference_pair_logits(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    pixel_feats: Tensor,
    pixel_anchors: Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
) -> Tensor:
    """[Q, N] float32 logit of every query on every entry, through [Q, hidden, N] tensors."""
    dtype = params.dtype
    weights, biases = fold_dynamic_params(
        params, query_anchors, query_soi, layer_shapes, use_rel_coords, dtype
    )
    inputs = entry_inputs(pixel_feats, pixel_anchors, use_rel_coords, dtype)
    num_queries, hidden = weights[0].shape[:2]
    w0, b0 = weights[0], biases[0]
    x = torch.addmm(b0.reshape(-1, 1), w0.reshape(num_queries * hidden, w0.shape[2]), inputs.t())
    x = x.view(num_queries, hidden, inputs.shape[0])
    for w, b in zip(weights[1:], biases[1:]):
        x = torch.bmm(w, F.relu(x)).add_(b[:, :, None])
    return x[:, 0, :].float()


def inter_scene_mean_sq_prob(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    query_images: Tensor,
    pixel_feats: Tensor,
    pixel_anchors: Tensor,
    pixel_images: Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
) -> Tuple[Tensor, InterSceneStats]:
    """[Q] mean over the entries of other images of each query's squared probability: the
    per-pixel term that the dice loss's denominator holds, for the dice form of the loss.

    Arguments as ``inter_scene_focal_loss``; differentiable in ``params`` and in entry
    features that require grad. A query without a valid entry gets 0. Plain PyTorch: the
    [Q, hidden, N] intermediates are kept.
    """
    logits = reference_pair_logits(
        params, query_anchors, query_soi, pixel_feats, pixel_anchors, layer_shapes, use_rel_coords
    )
    valid = query_images[:, None] != pixel_images[None, :]
    counts = valid.sum(dim=1)
    probs = logits.sigmoid()
    mean_sq = (probs.square() * valid).sum(dim=1) / counts.clamp(min=1)
    with torch.no_grad():
        num_pairs = counts.sum()
        firing = ((probs > 0.5) & valid).sum().float() / num_pairs.clamp(min=1)
    return mean_sq, InterSceneStats(num_pairs, firing)


def reference_inter_scene_focal_loss(
    params: Tensor,
    query_anchors: Tensor,
    query_soi: Tensor,
    query_images: Tensor,
    pixel_feats: Tensor,
    pixel_anchors: Tensor,
    pixel_images: Tensor,
    layer_shapes: Sequence[Tuple[int, int]],
    use_rel_coords: bool = True,
    alpha: float = 0.25,
    gamma: float = 2.0,
    normalization: str = "pairs",
    pair_mask: Optional[Tensor] = None,
    pair_loss: str = "focal",
    threshold: float = 0.8,
) -> Tuple[Tensor, InterSceneStats]:
    """The PyTorch graph the fused paths are tested against; keeps [Q, hidden, N] tensors."""
    logits = reference_pair_logits(
        params, query_anchors, query_soi, pixel_feats, pixel_anchors, layer_shapes, use_rel_coords
    )
    qw, pw, num_pairs = inter_scene_weights(
        query_images, pixel_images, normalization, pair_mask=pair_mask
    )
    valid = query_images[:, None] != pixel_images[None, :]
    if pair_mask is not None:
        valid = valid & pair_mask
    loss = pair_loss_fn(pair_loss, alpha, gamma, threshold)(logits)
    total = (loss * (qw[:, None] * pw[None, :] * valid)).sum()
    with torch.no_grad():
        firing = ((logits.sigmoid() > 0.5) & valid).sum().float() / num_pairs.clamp(min=1)
    return total, InterSceneStats(num_pairs, firing)


def _resolve_impl(impl: str, params: Tensor) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if params.is_cuda:
        from .triton_support import triton_available

        if triton_available():
            return "triton"
    return "tiled"


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
    pair_mask: Optional[Tensor] = None,
    pair_loss: str = "focal",
    threshold: float = 0.8,
) -> Tuple[Tensor, InterSceneStats]:
    """Focal loss (target 0) of every query on every entry of another image, or (``pair_loss
    "confident"``) its probability wherever that is at least ``threshold``.

    The relative coordinates of the pair (q, n) are ``(query_anchors[q] - pixel_anchors[n]) /
    query_soi[q]``; the caller picks the anchors that implement "instance_centered" or
    "overlay" placement.

    Args:
        params: [Q, P] dynamic mask head parameters of the queries (always get gradient).
        query_anchors: [Q, 2]; query_soi: [Q] size of interest of each query's FPN level;
        query_images: [Q] int64 id of each query's source image.
        pixel_feats: [N, C] mask features (may require grad: in-batch entries send gradient
            into the mask branch); pixel_anchors: [N, 2]; pixel_images: [N] int64.
            Anchors and sizes of interest get no gradient.
        layer_shapes: (out, in) per dynamic layer, the first taking ``2 + C`` inputs when
            ``use_rel_coords`` else ``C``.
        normalization: "pairs" (mean over valid pairs) or "query_image" (see
            ``inter_scene_weights``).
        impl: "reference", "tiled", "triton" (CUDA tensors only) or "auto" (triton on CUDA when
            it imports, else tiled).
        chunk_elems: tiled path only: about how many floats one [Q, hidden, T] chunk holds.
        pair_mask: optional [Q, N] bool, the pairs that may count besides the image test
            ("pairs" normalisation).
        pair_loss: "focal" or "confident" (reference and tiled paths; "auto" picks tiled for
            it on CUDA too).
    Returns:
        the loss (0 with the graph kept when no pair is valid) and statistics without gradient.
    """
    check_pair_loss(pair_loss)
    impl = "tiled" if impl == "auto" and pair_loss != "focal" else _resolve_impl(impl, params)
    if impl == "triton" and pair_loss != "focal":
        raise ValueError(f"the Triton kernel computes the focal loss only, not {pair_loss!r}")
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
    form = {"pair_loss": pair_loss, "threshold": threshold}
    if impl == "reference":
        return reference_inter_scene_focal_loss(*args, pair_mask=pair_mask, **form)
    if impl == "tiled":
        from .inter_scene_tiled import tiled_inter_scene_focal_loss

        return tiled_inter_scene_focal_loss(
            *args, chunk_elems=chunk_elems, pair_mask=pair_mask, **form
        )
    from .inter_scene_triton import triton_inter_scene_focal_loss

    return triton_inter_scene_focal_loss(*args, pair_mask=pair_mask)
