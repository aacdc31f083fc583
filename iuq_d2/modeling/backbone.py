"""ResNet-FPN with P6/P7 computed from P5, as FCOS and CondInst use it.

detectron2's own ``build_retinanet_resnet_fpn_backbone`` computes P6 from C5; FCOS computes it
from P5 (256 channels), which is what AdelaiDet's checkpoints hold (``top_block.p6`` is
256x256x3x3).
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7


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
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
