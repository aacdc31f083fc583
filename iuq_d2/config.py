"""Config keys of iuq_d2, added to a detectron2 config by ``add_condinst_config`` and
``add_iuq_config``.

The CondInst and FCOS keys keep AdelaiDet's names and defaults so that its CondInst yaml files and
checkpoints carry over. Every function here adds keys to the config it is given and never touches
detectron2's global default config.
"""

from typing import Optional

from detectron2.config import CfgNode as CN


def add_condinst_config(cfg: CN) -> None:
    """Add the FCOS, CondInst, dataset and engine keys that iuq_d2's CondInst reads."""
    _C = cfg

    # Use AdelaiDet-compatible ResNet-FPN with P6/P7 computed from P5 (see modeling/backbone.py).
    _C.MODEL.BACKBONE.NAME = "build_fcos_resnet_fpn_backbone"
    _C.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    _C.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    _C.MODEL.PROPOSAL_GENERATOR.NAME = "FCOS"
    _C.MODEL.META_ARCHITECTURE = "CondInst"
    _C.MODEL.MASK_ON = True
    # AdelaiDet's CondInst normalises with these (BGR, std 1) and so do its checkpoints.
    _C.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
    _C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    # Pass find_unused_parameters=True to DistributedDataParallel. Needed only for configs that
    # leave some parameters out of the loss (e.g. a frozen head that still has requires_grad).
    _C.MODEL.DDP_FIND_UNUSED_PARAMETERS = False

    _C.MODEL.FCOS = CN()
    # Number of foreground classes.
    _C.MODEL.FCOS.NUM_CLASSES = 80
    # FPN levels the head runs on, and their strides in input pixels.
    _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _C.MODEL.FCOS.FPN_STRIDES = [8, 16, 32, 64, 128]
    # Prior probability of foreground used to initialise the classification bias.
    _C.MODEL.FCOS.PRIOR_PROB = 0.01
    # Score threshold for candidate locations at inference.
    _C.MODEL.FCOS.INFERENCE_TH_TEST = 0.05
    # IoU threshold of the class-wise NMS.
    _C.MODEL.FCOS.NMS_TH = 0.6
    # Candidates kept per level before NMS, and detections kept per image after it (inference).
    _C.MODEL.FCOS.PRE_NMS_TOPK_TEST = 1000
    _C.MODEL.FCOS.POST_NMS_TOPK_TEST = 100
    # Inference post-processing; the defaults are AdelaiDet's, mmdetection's CondInst differs in
    # each (configs/CondInst/mmdet_R_50_ms_poly_90k.yaml):
    # Rank the PRE_NMS_TOPK_TEST candidates by class score x centerness (False: class score).
    _C.MODEL.FCOS.PRE_NMS_RANK_WITH_CTR = True
    # Clip boxes to the image before NMS (False: only after it, in detector_postprocess).
    _C.MODEL.FCOS.CLIP_BOXES_BEFORE_NMS = False
    # Before NMS drop boxes whose width or height is not above this; -1 keeps all.
    _C.MODEL.FCOS.MIN_BOX_SIZE_TEST = -1.0
    # Score of a detection: sqrt(class score x centerness) (False: the product itself).
    _C.MODEL.FCOS.SQRT_SCORE_TEST = True
    # Keep detections tied with the POST_NMS_TOPK_TEST-th score (False: cut at exactly that many).
    _C.MODEL.FCOS.POST_NMS_KEEP_TIES = True
    # Number of FPN levels built on top of P5 (2: P6 and P7).
    _C.MODEL.FCOS.TOP_LEVELS = 2
    # Normalisation in the head towers: "GN", "BN", "SyncBN" or "" for none.
    _C.MODEL.FCOS.NORM = "GN"
    # Learn a scalar per level that multiplies the box regression.
    _C.MODEL.FCOS.USE_SCALE = True
    # Box quality branch. Only "ctrness" (centerness) is implemented.
    _C.MODEL.FCOS.BOX_QUALITY = "ctrness"
    # Multiply scores by centerness before (True) or after (False) the score threshold. False
    # as in AdelaiDet's defaults; its Base-CondInst.yaml and ours set True.
    _C.MODEL.FCOS.THRESH_WITH_CTR = False
    # Focal loss parameters of the classification branch.
    _C.MODEL.FCOS.LOSS_ALPHA = 0.25
    _C.MODEL.FCOS.LOSS_GAMMA = 2.0
    # Weight of the classification loss (normalised by the number of positives, averaged
    # over GPUs).
    _C.MODEL.FCOS.LOSS_WEIGHT_CLS = 1.0
    # Upper bounds of the object size (max regression distance, pixels) assigned to each level
    # but the last; the last level takes everything above.
    _C.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]
    # Apply ReLU to the box regression (distances are non-negative).
    _C.MODEL.FCOS.USE_RELU = True
    # Deformable convolutions in the towers are not implemented; kept so AdelaiDet yamls load.
    _C.MODEL.FCOS.USE_DEFORMABLE = False
    # Number of convolutions in the classification, box and shared towers.
    _C.MODEL.FCOS.NUM_CLS_CONVS = 4
    _C.MODEL.FCOS.NUM_BOX_CONVS = 4
    _C.MODEL.FCOS.NUM_SHARE_CONVS = 0
    # Center sampling: a location is positive only within POS_RADIUS strides of the box center.
    _C.MODEL.FCOS.CENTER_SAMPLE = True
    _C.MODEL.FCOS.POS_RADIUS = 1.5
    # Box regression loss: "giou" or "iou".
    _C.MODEL.FCOS.LOC_LOSS_TYPE = "giou"

    _C.MODEL.CONDINST = CN()
    # Stride (input pixels) at which instance masks are predicted and supervised.
    _C.MODEL.CONDINST.MASK_OUT_STRIDE = 4
    # At most this many positive locations (sampled at random) train the mask head per GPU;
    # -1 keeps all.
    _C.MODEL.CONDINST.MAX_PROPOSALS = -1
    # Alternatively keep the k best-scored positive locations per image, spread over its
    # instances; -1 disables. Mutually exclusive with MAX_PROPOSALS.
    _C.MODEL.CONDINST.TOPK_PROPOSALS_PER_IM = -1
    # Run the convolutions (backbone, FPN, towers, mask branch) on channels-last tensors. The
    # math is the same; oneDNN (CPU) and cuDNN (tensor cores) have faster kernels for that layout.
    _C.MODEL.CONDINST.CHANNELS_LAST = False

    _C.MODEL.CONDINST.MASK_HEAD = CN()
    # Channels of the hidden layers of the dynamic mask head.
    _C.MODEL.CONDINST.MASK_HEAD.CHANNELS = 8
    # Number of 1x1 layers of the dynamic mask head.
    _C.MODEL.CONDINST.MASK_HEAD.NUM_LAYERS = 3
    # Drop the relative coordinates from the mask head input (ablation).
    _C.MODEL.CONDINST.MASK_HEAD.DISABLE_REL_COORDS = False
    # Implementation of the head on whole feature maps (iuq_d2.layers.dense_mask_head): "auto"
    # (the Triton kernels on CUDA where they apply, the tiled path elsewhere), "triton", "tiled"
    # or "reference"
    # (AdelaiDet's math: a copy of the features per query and all activations kept). All but
    # "reference" also score the mask loss over chunks of queries (iuq_d2.layers.mask_dice).
    _C.MODEL.CONDINST.MASK_HEAD.IMPL = "auto"

    _C.MODEL.CONDINST.MASK_BRANCH = CN()
    # Channels of the mask feature F that the dynamic mask head reads.
    _C.MODEL.CONDINST.MASK_BRANCH.OUT_CHANNELS = 8
    # FPN levels fused into F (the first one sets its stride).
    _C.MODEL.CONDINST.MASK_BRANCH.IN_FEATURES = ["p3", "p4", "p5"]
    # Channels of the branch's hidden layers.
    _C.MODEL.CONDINST.MASK_BRANCH.CHANNELS = 128
    # Normalisation in the branch: "BN", "SyncBN", "GN" or "".
    _C.MODEL.CONDINST.MASK_BRANCH.NORM = "BN"
    # 3x3 convolutions after the fusion.
    _C.MODEL.CONDINST.MASK_BRANCH.NUM_CONVS = 4
    # Auxiliary semantic segmentation loss on the fused features (training only).
    _C.MODEL.CONDINST.MASK_BRANCH.SEMANTIC_LOSS_ON = False

    # "SGD" (detectron2's, with SOLVER.MOMENTUM) or "ADAMW"; both use SOLVER.BASE_LR,
    # SOLVER.WEIGHT_DECAY* and the learning rate schedule.
    _C.SOLVER.OPTIMIZER = "SGD"

    # AdelaiDet's horizontal flip switch: False drops the training flip that INPUT.RANDOM_FLIP
    # asks for (AdelaiDet flips horizontally whenever this is True).
    _C.INPUT.HFLIP_TRAIN = True
    add_boxinst_config(_C)
    _add_adelaidet_only_keys(_C)

    # COCO-format datasets to register at set-up, each [name, json_file, image_root]; their
    # names can then be used in DATASETS.TRAIN / DATASETS.TEST.
    _C.DATASETS.CUSTOM_COCO = []
    # Training dataset mapper (iuq_d2.data.DATASET_MAPPERS): "condinst" (CondInstDatasetMapper)
    # or "iuq" (IUQDatasetMapper, which adds the paired equivariance view of every image, as
    # IUQCondInst with MODEL.IUQ.EQUI.ENABLED needs). Test loaders always use "condinst".
    _C.INPUT.DATASET_MAPPER_NAME = "condinst"


def add_boxinst_config(cfg: CN) -> None:
    """BoxInst's keys (MODEL.BOXINST), with AdelaiDet's names and defaults."""
    _C = cfg
    _C.MODEL.BOXINST = CN()
    # Train the masks from boxes alone: BoxInst's projection and pairwise losses replace the
    # mask loss, and the dataset mapper reads no masks (box-only datasets train).
    _C.MODEL.BOXINST.ENABLED = False
    # Rows at the bottom of each original image left out of the pairwise loss (AdelaiDet's
    # convention for COCO, whose bottom rows carry annotation errors); 0 keeps all.
    _C.MODEL.BOXINST.BOTTOM_PIXELS_REMOVED = 10
    _C.MODEL.BOXINST.PAIRWISE = CN()
    # Neighbours of a pixel in the pairwise loss: a SIZE x SIZE grid of step DILATION (pixels
    # at the mask output stride), the pixel itself left out.
    _C.MODEL.BOXINST.PAIRWISE.SIZE = 3
    _C.MODEL.BOXINST.PAIRWISE.DILATION = 2
    # Iterations over which the pairwise loss's weight rises linearly to 1 (0: from the start).
    _C.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS = 10000
    # Pairs count when their LAB colour similarity exp(-|lab_i - lab_j| / 2) is at least this.
    _C.MODEL.BOXINST.PAIRWISE.COLOR_THRESH = 0.3


def _add_adelaidet_only_keys(cfg: CN) -> None:
    """Keys of AdelaiDet features that iuq_d2 does not implement, with AdelaiDet's defaults, so
    that its yaml files and the config.yaml of its training runs merge. A value other than the
    default is refused by ``check_adelaidet_only_keys``; keys whose feature is off are free."""
    _C = cfg
    # Rows removed from the bottom of CondInst's images (-1: none); only -1.
    _C.MODEL.CONDINST.BOTTOM_PIXELS_REMOVED = -1
    # Run the dynamic mask head in half precision; only False (SOLVER.AMP.ENABLED covers it).
    _C.MODEL.CONDINST.MASK_HEAD.USE_FP16 = False
    # Classification loss normaliser; only "fg" (the number of positives over all GPUs).
    _C.MODEL.FCOS.LOSS_NORMALIZER_CLS = "fg"
    # Post-processing of the proposals FCOS yields in training when YIELD_PROPOSAL is True.
    _C.MODEL.FCOS.INFERENCE_TH_TRAIN = 0.05
    _C.MODEL.FCOS.PRE_NMS_TOPK_TRAIN = 1000
    _C.MODEL.FCOS.POST_NMS_TOPK_TRAIN = 100
    # Hand training proposals and box-tower features to a second stage; only False.
    _C.MODEL.FCOS.YIELD_PROPOSAL = False
    _C.MODEL.FCOS.YIELD_BOX_FEATURES = False
    # Deformable convolution in every n-th block of a deformable stage; only 1.
    _C.MODEL.RESNETS.DEFORM_INTERVAL = 1
    # Anti-aliased (blur-pooled) ResNet; only False.
    _C.MODEL.BACKBONE.ANTI_ALIAS = False
    # With INPUT.CROP.ENABLED, crop so that an instance stays inside; only False when cropping
    # (detectron2's RandomCrop).
    _C.INPUT.CROP.CROP_INSTANCE = True
    # Random rotation in training; only False.
    _C.INPUT.IS_ROTATE = False


# (key, the only value iuq_d2 implements, the key that must be on for the value to matter).
_ADELAIDET_ONLY_VALUES = (
    ("MODEL.CONDINST.BOTTOM_PIXELS_REMOVED", -1, None),
    ("MODEL.CONDINST.MASK_HEAD.USE_FP16", False, None),
    ("MODEL.FCOS.LOSS_NORMALIZER_CLS", "fg", None),
    ("MODEL.FCOS.YIELD_PROPOSAL", False, None),
    ("MODEL.FCOS.YIELD_BOX_FEATURES", False, None),
    ("MODEL.BACKBONE.ANTI_ALIAS", False, None),
    ("INPUT.IS_ROTATE", False, None),
    ("INPUT.CROP.CROP_INSTANCE", False, "INPUT.CROP.ENABLED"),
)


def _get(cfg: CN, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def check_adelaidet_only_keys(cfg: CN) -> None:
    """Refuse values of AdelaiDet keys that select a feature iuq_d2 does not implement, naming
    the key, rather than train something other than what the config says."""
    for key, supported, needs in _ADELAIDET_ONLY_VALUES:
        value = _get(cfg, key)
        if value != supported and (needs is None or _get(cfg, needs)):
            where = f" when {needs} is True" if needs else ""
            raise ValueError(
                f"{key}={value!r} selects an AdelaiDet feature that iuq_d2 does not implement; "
                f"only {supported!r} is supported{where}"
            )
    deformable = any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)
    if deformable and cfg.MODEL.RESNETS.DEFORM_INTERVAL != 1:
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_INTERVAL={cfg.MODEL.RESNETS.DEFORM_INTERVAL} is not "
            "implemented: detectron2's ResNet makes every block of a deformable stage deformable "
            "(interval 1)"
        )


def add_iuq_config(cfg: CN) -> None:
    """Add the keys of the IUQ training framework (MODEL.IUQ). They matter in training only:
    an IUQCondInst in eval mode is CondInst. What each setting measured is in
    docs/experiments.md."""
    _C = cfg
    _C.MODEL.IUQ = CN()
    # Every this many iterations, log the norm of the gradient that the mask loss and each IUQ
    # loss send into the controller's output and into F (a partial backward per loss); 0: off.
    _C.MODEL.IUQ.GRADIENT_LOG_PERIOD = 0

    # Inter-scene (dataset-level) uniqueness: each query must stay silent on instance pixels of
    # other images, drawn from a bank filled over past iterations on all GPUs.
    _C.MODEL.IUQ.INTER = CN()
    _C.MODEL.IUQ.INTER.ENABLED = True
    # Weight of the inter-scene focal loss (the paper's: 1), reached linearly over WARMUP_ITERS.
    _C.MODEL.IUQ.INTER.LOSS_WEIGHT = 0.1
    _C.MODEL.IUQ.INTER.WARMUP_ITERS = 0
    # Focal loss parameters (the target is always 0: a negative pair).
    _C.MODEL.IUQ.INTER.FOCAL_ALPHA = 0.25
    _C.MODEL.IUQ.INTER.FOCAL_GAMMA = 2.0
    # Relative coordinates of a bank pixel: "overlay" (its own position relative to the query's
    # location) or "instance_centered" (the query placed at the centre of the pixel's instance).
    _C.MODEL.IUQ.INTER.COORDS = "overlay"
    # Entries the bank holds (first in, first out), identical on every GPU.
    _C.MODEL.IUQ.INTER.BANK_SIZE = 100000
    # Stride-8 cells sampled per ground-truth instance at each enqueue (with replacement when it
    # covers fewer), so that large objects do not dominate the bank.
    _C.MODEL.IUQ.INTER.PIXELS_PER_INSTANCE = 50
    # Bank entries sampled per iteration as negatives, besides the current global batch's.
    _C.MODEL.IUQ.INTER.NUM_NEGATIVES = 4096
    # At most this many of the global batch's instance pixels are evaluated per step (a random
    # subset; all enter the bank), so the pairs per step stay bounded on crowded images; -1: all.
    _C.MODEL.IUQ.INTER.MAX_BATCH_ENTRIES = 2048
    # At most this many of the mask loss's queries are evaluated per step (a random subset; the
    # mean over its pairs estimates the mean over all); -1: all.
    _C.MODEL.IUQ.INTER.MAX_QUERIES = 64
    # "pairs": mean over all valid (query, pixel) pairs; "query_image" (the paper's): per query
    # the mean over each other image's pixels, averaged over those images, then over queries.
    _C.MODEL.IUQ.INTER.NORMALIZATION = "pairs"
    # Implementation (iuq_d2.layers.inter_scene_loss): "auto" (the Triton kernel on CUDA where it
    # applies, the tiled path elsewhere), "triton", "tiled" or "reference" (plain PyTorch).
    _C.MODEL.IUQ.INTER.IMPL = "auto"

    # Equivariance: every training image I gets a view g(I) (aligned crop, optional horizontal
    # flip, rescale), made in the dataset mapper before padding so that g is known exactly.
    # Needs INPUT.DATASET_MAPPER_NAME "iuq".
    _C.MODEL.IUQ.EQUI = CN()
    _C.MODEL.IUQ.EQUI.ENABLED = False
    # "paired": the views are part of SOLVER.IMS_PER_BATCH (IMS_PER_BATCH / 2 originals, each
    # with its view); "extra": IMS_PER_BATCH originals plus their views.
    _C.MODEL.IUQ.EQUI.MODE = "paired"
    # Weight of the query-equivariance loss: the dice loss of the queries predicted on g(I)
    # applied to g(F(I)), the warped representation of the original pass (the paper's: 3).
    _C.MODEL.IUQ.EQUI.QUERY_LOSS_WEIGHT = 3.0
    # Weight of the representation-equivariance loss, the squared difference between F(g(I))
    # and g(F(I)) over the cells valid in both (ours; 0: off).
    _C.MODEL.IUQ.EQUI.FEAT_LOSS_WEIGHT = 0.0
    # Probability that the view is flipped horizontally.
    _C.MODEL.IUQ.EQUI.FLIP_PROB = 0.5
    # Range (min, max) of the crop's side relative to the image's, drawn per side; the crop is
    # aligned to the stride of F so that warping F is pure indexing.
    _C.MODEL.IUQ.EQUI.CROP_SIZE = (0.6, 1.0)
    # Rescale factors of the cropped view, one drawn uniformly per image; 1.0 keeps the size.
    _C.MODEL.IUQ.EQUI.SCALES = (0.75, 1.0, 1.25)


# Keys of earlier versions, measured and removed (docs/experiments.md); 01a7ce5 still runs them.
REMOVED_KEYS = tuple(
    "MODEL." + key
    for key in (
        "CONDINST.MASK_HEAD.LOGIT_TEMPERATURE",
        "IUQ.EQUI.FEAT_DISTANCE",
        "IUQ.CONTRAST",
        *(
            "IUQ.INTER." + name
            for name in (
                "MAX_AGE_ITERS",
                "BATCH_ENTRY_GRAD",
                "QUERY_GRAD",
                "REFERENCE",
                "DETACH_OUTPUT_BIAS",
                "EXCLUDE_OWN_FOOTPRINT",
                "SAME_CLASS_ONLY",
                "PROJECT_CONFLICT",
                "MIN_OWN_DICE",
                "LOSS_FORM",
                "CONFIDENT_THRESHOLD",
                "OWN_IMAGE_WEIGHT",
            )
        ),
    )
)
REMOVED_AT = "01a7ce5"


def removed_key_error(error: Exception, source: str) -> Optional[ValueError]:
    """The error for a yaml or override that sets a removed key (YACS names it in ``error``),
    or None when the unknown key was never ours."""
    message = str(error)
    for key in REMOVED_KEYS:
        if key in message:
            return ValueError(
                f"{source} sets {key}, an option that was measured and removed from iuq_d2 "
                f"(docs/experiments.md has its results); commit {REMOVED_AT} still runs it"
            )
    return None
