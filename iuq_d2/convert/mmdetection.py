"""mmdetection 3.x CondInst checkpoints as iuq_d2 CondInst checkpoints.

mmdetection's ``condinst_r50_fpn_ms-poly-90k_coco_instance`` is the one COCO-trained CondInst
whose weights are still published. Its network is ours once the input is RGB normalised by
ImageNet's mean and std, the ResNet strides in its 3x3 convolutions, and FCOS post-processes as
mmdetection does; configs/CondInst/mmdet_R_50_ms_poly_90k.yaml sets all of that. What is left is
naming and the shape of mmcv's ``Scale`` (0-d): this module maps every tensor by a fixed table,
needs no mmdetection, and refuses a checkpoint whose tensors are not exactly that table's.
tests/test_mmdet_parity.py checks the converted network against mmdetection itself.
"""

import logging
import pickle
import types
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

RESNET50_BLOCKS = (3, 4, 6, 3)
# P3-P7; mmdetection's CondInst normalises relative coordinates by 8 strides of the query's level.
_NUM_LEVELS = 5
_MMDET_SIZE_OF_INTEREST = 8
_FCOS_STRIDES = (8, 16, 32, 64, 128)
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")

# (source name, our name); our name None: a tensor we have no use for (dropped).
KeyPairs = List[Tuple[str, Optional[str]]]


def _norm(pairs: KeyPairs, src: str, dst: str, keep_count: bool) -> None:
    """A BatchNorm's tensors. detectron2's FrozenBatchNorm2d has no num_batches_tracked."""
    pairs.extend((f"{src}.{f}", f"{dst}.{f}") for f in _BN_FIELDS)
    count = f"{dst}.num_batches_tracked" if keep_count else None
    pairs.append((f"{src}.num_batches_tracked", count))


def _conv(pairs: KeyPairs, src: str, dst: str, bias: bool = True) -> None:
    pairs.append((f"{src}.weight", f"{dst}.weight"))
    if bias:
        pairs.append((f"{src}.bias", f"{dst}.bias"))


def resnet_key_pairs(blocks: Tuple[int, ...] = RESNET50_BLOCKS) -> KeyPairs:
    """torchvision's ResNet names (mmdetection's ``backbone.`` uses them too) and detectron2's,
    for a bottleneck ResNet with ``blocks`` blocks per stage."""
    pairs: KeyPairs = [("conv1.weight", "stem.conv1.weight")]
    _norm(pairs, "bn1", "stem.conv1.norm", keep_count=False)
    for stage, num_blocks in enumerate(blocks, start=1):
        for block in range(num_blocks):
            src, dst = f"layer{stage}.{block}", f"res{stage + 1}.{block}"
            for k in (1, 2, 3):
                _conv(pairs, f"{src}.conv{k}", f"{dst}.conv{k}", bias=False)
                _norm(pairs, f"{src}.bn{k}", f"{dst}.conv{k}.norm", keep_count=False)
            if block == 0:
                _conv(pairs, f"{src}.downsample.0", f"{dst}.shortcut", bias=False)
                _norm(pairs, f"{src}.downsample.1", f"{dst}.shortcut.norm", keep_count=False)
    return pairs


def mmdet_condinst_key_pairs(num_tower_convs: int = 4, num_branch_convs: int = 4) -> KeyPairs:
    """Every tensor of mmdetection's R-50 CondInst (``condinst_r50_fpn_*``) and its name in
    iuq_d2's CondInst."""
    pairs: KeyPairs = [
        (f"backbone.{src}", None if dst is None else f"backbone.bottom_up.{dst}")
        for src, dst in resnet_key_pairs()
    ]
    # FPN on C3-C5 (mmdetection's start_level=1); its two extra convs are our P6/P7 top block.
    for i in range(3):
        _conv(pairs, f"neck.lateral_convs.{i}.conv", f"backbone.fpn_lateral{i + 3}")
    outputs = [f"backbone.fpn_output{i + 3}" for i in range(3)]
    for i, dst in enumerate(outputs + ["backbone.top_block.p6", "backbone.top_block.p7"]):
        _conv(pairs, f"neck.fpn_convs.{i}.conv", dst)

    # FCOS towers: ours are flat [conv, GN, ReLU] * n, mmdetection's ConvModule(conv, gn) * n.
    head = "proposal_generator.fcos_head"
    for src, dst in (("cls_convs", "cls_tower"), ("reg_convs", "bbox_tower")):
        for k in range(num_tower_convs):
            _conv(pairs, f"bbox_head.{src}.{k}.conv", f"{head}.{dst}.{3 * k}")
            _conv(pairs, f"bbox_head.{src}.{k}.gn", f"{head}.{dst}.{3 * k + 1}")
    _conv(pairs, "bbox_head.conv_cls", f"{head}.cls_logits")
    _conv(pairs, "bbox_head.conv_reg", f"{head}.bbox_pred")
    _conv(pairs, "bbox_head.conv_centerness", f"{head}.ctrness")
    pairs.extend(
        (f"bbox_head.scales.{level}.scale", f"{head}.scales.{level}.scale")
        for level in range(_NUM_LEVELS)
    )
    _conv(pairs, "bbox_head.controller", "controller")

    # Mask branch: one conv-BN-ReLU per input level, a tower of them, a 1x1 projection.
    branch = "mask_head.mask_feature_head"
    for i in range(3):
        src = f"{branch}.convs_all_levels.{i}.conv{i}"
        _conv(pairs, f"{src}.conv", f"mask_branch.refine.{i}.0", bias=False)
        _norm(pairs, f"{src}.bn", f"mask_branch.refine.{i}.1", keep_count=True)
    for k in range(num_branch_convs):
        _conv(pairs, f"{branch}.conv_branch.{k}.conv", f"mask_branch.tower.{k}.0", bias=False)
        _norm(pairs, f"{branch}.conv_branch.{k}.bn", f"mask_branch.tower.{k}.1", keep_count=True)
    _conv(pairs, f"{branch}.conv_pred", f"mask_branch.tower.{num_branch_convs}")
    return pairs


def convert_mmdet_condinst(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Our CondInst's state_dict from mmdetection's. Raises ValueError naming the first tensor
    that the table does not know (in the checkpoint's order) or that the checkpoint lacks."""
    pairs = mmdet_condinst_key_pairs()
    table = dict(pairs)
    for key in state_dict:
        if key not in table:
            raise ValueError(
                f"unknown key {key!r}: not a tensor of mmdetection's R-50 CondInst "
                "(condinst_r50_fpn_*); other models are not supported"
            )
    for key, _ in pairs:
        if key not in state_dict:
            raise ValueError(f"missing key {key!r} of mmdetection's R-50 CondInst")
    converted = {}
    for src, dst in pairs:
        if dst is None:
            continue
        value = state_dict[src]
        # mmcv's Scale holds a 0-d parameter, ours a 1-element one (as AdelaiDet's).
        converted[dst] = value.reshape(1) if ".scales." in src else value
    # Buffers of our dynamic mask head: the relative-coordinate normaliser of each level
    # (mmdetection: 8 strides, which are our MODEL.FCOS.SIZES_OF_INTEREST + twice the last)
    # and AdelaiDet's training-step counter.
    converted["mask_head.sizes_of_interest"] = torch.tensor(
        [_MMDET_SIZE_OF_INTEREST * s for s in _FCOS_STRIDES], dtype=torch.int64
    )
    converted["mask_head._iter"] = torch.zeros([1])
    return converted


class _Unresolved:
    """Stands for an object whose class cannot be imported here (an mmengine type in the
    checkpoint's ``meta``); only the tensors are needed."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Unresolved


_lenient_pickle = types.ModuleType("_lenient_pickle")
_lenient_pickle.Unpickler = _LenientUnpickler  # type: ignore[attr-defined]
_lenient_pickle.load = pickle.load  # type: ignore[attr-defined]


def read_mmdet_state_dict(path: str) -> Dict[str, Tensor]:
    """The ``state_dict`` of an mmdetection checkpoint file. Tries a weights-only load first;
    a ``meta`` that pickles mmengine objects needs a full unpickling (which, as any such load,
    runs what the file asks: convert files you trust), in which classes that cannot be
    imported (mmengine's, without mmdetection installed) become placeholders."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        logger.warning(f"{path} holds more than tensors: unpickling it fully")
        checkpoint = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle
        )
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a checkpoint (a {type(checkpoint).__name__})")
    state_dict = checkpoint.get("state_dict", checkpoint)
    return {k: v for k, v in state_dict.items() if isinstance(v, Tensor)}
