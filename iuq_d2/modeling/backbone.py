"""ResNet-FPN with P6/P7 computed from P5, as FCOS and CondInst use it.

detectron2's own ``build_retinanet_resnet_fpn_backbone`` computes P6 from C5; FCOS computes it
from P5 (256 channels), which is what AdelaiDet's checkpoints hold (``top_block.p6`` is
256x256x3x3).
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, build_resnet_backbone
from detectron2.modeling.backbone import Backbone, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem

_BASIC_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def build_narrow_basic_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """ResNet-18/34 whose stage widths start at ``RES2_OUT_CHANNELS`` instead of 64.

    detectron2's builder only allows 64 for these depths. Halving the width quarters the cost,
    which is what lets the demo train from scratch on two CPU cores in minutes.
    """
    res = cfg.MODEL.RESNETS
    stem = BasicStem(input_shape.channels, res.STEM_OUT_CHANNELS, norm=res.NORM)
    stages = []
    in_channels, out_channels = res.STEM_OUT_CHANNELS, res.RES2_OUT_CHANNELS
    for index, num_blocks in enumerate(_BASIC_BLOCKS[res.DEPTH]):
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                num_blocks,
                in_channels=in_channels,
                out_channels=out_channels,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                norm=res.NORM,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=res.OUT_FEATURES).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


def _build_bottom_up(cfg, input_shape: ShapeSpec) -> Backbone:
    res = cfg.MODEL.RESNETS
    if res.DEPTH in _BASIC_BLOCKS and res.RES2_OUT_CHANNELS != 64:
        return build_narrow_basic_resnet(cfg, input_shape)
    return build_resnet_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    top_levels = cfg.MODEL.FCOS.TOP_LEVELS
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    if top_levels == 2:
        top_block = LastLevelP6P7(out_channels, out_channels, in_feature="p5")
    elif top_levels == 0:
        top_block = None
    else:
        raise ValueError(f"MODEL.FCOS.TOP_LEVELS must be 0 or 2, got {top_levels}")
    return FPN(
        bottom_up=_build_bottom_up(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
