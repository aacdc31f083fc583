"""Config keys of iuq_d2, added to a detectron2 config by ``add_condinst_config`` and
``add_iuq_config``.

The CondInst and FCOS keys keep AdelaiDet's names and defaults so that its CondInst yaml files and
checkpoints carry over. Every function here adds keys to the config it is given and never touches
detectron2's global default config.
"""

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
    # Mask probabilities are sigmoid(logit / T), in training and inference (ours; AdelaiDet: 1).
    # The paper's released CondInst code uses T = 3 beside its IUQ losses (docs/method.md).
    # Implemented by scaling the last dynamic layer's parameters, so checkpoints are unchanged.
    _C.MODEL.CONDINST.MASK_HEAD.LOGIT_TEMPERATURE = 1.0
    # Implementation of the head on whole feature maps (iuq_d2.layers.dense_mask_head): "auto"
    # (the Triton kernels on CUDA, the tiled path elsewhere), "triton", "tiled" or "reference"
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
    _add_adelaidet_only_keys(_C)

    # COCO-format datasets to register at set-up, each [name, json_file, image_root]; their
    # names can then be used in DATASETS.TRAIN / DATASETS.TEST.
    _C.DATASETS.CUSTOM_COCO = []
    # Training dataset mapper (iuq_d2.data.DATASET_MAPPERS): "condinst" (CondInstDatasetMapper)
    # or "iuq" (IUQDatasetMapper, which adds the paired equivariance view of every image, as
    # IUQCondInst with MODEL.IUQ.EQUI.ENABLED needs). Test loaders always use "condinst".
    _C.INPUT.DATASET_MAPPER_NAME = "condinst"


def _add_adelaidet_only_keys(cfg: CN) -> None:
    """Keys of AdelaiDet features that iuq_d2 does not implement, with AdelaiDet's defaults, so
    that its yaml files and the config.yaml of its training runs merge. A value other than the
    default is refused by ``check_adelaidet_only_keys``; keys whose feature is off are free."""
    _C = cfg
    # BoxInst (box-supervised CondInst): only ENABLED False.
    _C.MODEL.BOXINST = CN()
    _C.MODEL.BOXINST.ENABLED = False
    # Read by BoxInst only: rows of image bottom ignored, and its pairwise colour loss.
    _C.MODEL.BOXINST.BOTTOM_PIXELS_REMOVED = 10
    _C.MODEL.BOXINST.PAIRWISE = CN()
    _C.MODEL.BOXINST.PAIRWISE.SIZE = 3
    _C.MODEL.BOXINST.PAIRWISE.DILATION = 2
    _C.MODEL.BOXINST.PAIRWISE.WARMUP_ITERS = 10000
    _C.MODEL.BOXINST.PAIRWISE.COLOR_THRESH = 0.3
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
    ("MODEL.BOXINST.ENABLED", False, None),
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
    an IUQCondInst in eval mode is CondInst."""
    _C = cfg
    _C.MODEL.IUQ = CN()
    # Every this many iterations, log the norm of the gradient that the mask loss and each IUQ
    # loss send into the controller output and into the mask features (iuq/grad_ctrl/*,
    # iuq/grad_feat/*); 0 turns it off. Costs a partial backward per loss on those iterations.
    _C.MODEL.IUQ.GRADIENT_LOG_PERIOD = 20

    # Inter-scene (dataset-level) uniqueness: each query must stay silent on instance pixels of
    # other images, drawn from a bank filled over past iterations on all GPUs.
    _C.MODEL.IUQ.INTER = CN()
    _C.MODEL.IUQ.INTER.ENABLED = True
    # Weight of the inter-scene focal loss, reached linearly over WARMUP_ITERS iterations.
    # 0.1: at the full demo recipe (3 seeds, README "The default IUQ config against CondInst")
    # weight 0.1 is level with CondInst on shapes and on cells, while 0.25 is below it on
    # shapes (and 1 lower still on the short schedule). No weight measured is above CondInst
    # beyond the seed spread: this is the least harmful one, not a demonstrated gain.
    _C.MODEL.IUQ.INTER.LOSS_WEIGHT = 0.1
    _C.MODEL.IUQ.INTER.WARMUP_ITERS = 0
    # Focal loss parameters (the target is always 0: a negative pair).
    _C.MODEL.IUQ.INTER.FOCAL_ALPHA = 0.25
    _C.MODEL.IUQ.INTER.FOCAL_GAMMA = 2.0
    # Relative coordinates fed with a bank pixel: "overlay" uses the pixel's own position in its
    # image relative to the query's location; "instance_centered" places the query at the centre
    # of the pixel's instance (hard negatives), which cost ~10 mask AP in the shapes ablation
    # (benchmarks/results/ablation_shapes_cpu.json), hence not the default. "random" places
    # the query at a random offset from each pixel, uniform within +-min(SIZES_OF_INTEREST)
    # (64 px by default) in x and y and drawn per entry: near the object, between the two.
    _C.MODEL.IUQ.INTER.COORDS = "overlay"
    # Entries the bank holds (first in, first out), identical on every GPU.
    _C.MODEL.IUQ.INTER.BANK_SIZE = 100000
    # Pixels sampled per ground-truth instance at each enqueue (with replacement when the
    # instance covers fewer stride-8 cells), so large objects do not dominate the bank.
    _C.MODEL.IUQ.INTER.PIXELS_PER_INSTANCE = 50
    # Bank entries sampled per iteration as negatives, on top of the entries the current global
    # batch produced.
    _C.MODEL.IUQ.INTER.NUM_NEGATIVES = 4096
    # Bank entries written more than this many iterations ago are not sampled (-1: any age).
    # An age in iterations means the same staleness of the representation whatever the dataset
    # size or the entries per iteration, where a bank size would not.
    _C.MODEL.IUQ.INTER.MAX_AGE_ITERS = -1
    # At most this many of the current global batch's instance pixels are evaluated as
    # negatives per step (a random subset; all of them still enter the bank), so that the pairs
    # per step stay bounded on crowded images (tens of instances x 50 pixels x every image of
    # the global batch). -1: all.
    _C.MODEL.IUQ.INTER.MAX_BATCH_ENTRIES = 2048
    # At most this many of the batch's queries (the mask loss's, up to MAX_PROPOSALS) are
    # evaluated against the negatives per step, a random subset: the mean over its pairs
    # estimates the mean over all, and the pairs per step stay bounded (queries x negatives).
    # 64 of up to 200 brings the bank's step-time overhead on the demo from 1.16x to 1.01x, on
    # cells from 1.39x to 1.08x (benchmarks/train_speed.py, README). -1: all.
    _C.MODEL.IUQ.INTER.MAX_QUERIES = 64
    # Keep this process's in-batch instance pixels attached to the mask branch, so that the
    # representation is also trained to separate instances of different images (the bank and
    # other processes' pixels are constants).
    _C.MODEL.IUQ.INTER.BATCH_ENTRY_GRAD = False
    # Whether the loss reaches the queries (controller, FCOS box tower). False (ours) leaves
    # the representation as the only thing it trains, through the attached in-batch pixels
    # (needs BATCH_ENTRY_GRAD; the bank's constant entries are then not sampled, they would
    # carry no gradient): other images' instances must become unlike the query's own, rather
    # than the query lowering all of its logits, its own object's too.
    _C.MODEL.IUQ.INTER.QUERY_GRAD = True
    # "pairs": mean over all valid (query, pixel) pairs; "query_image": per query the mean over
    # each other image's pixels, averaged over those images, then over queries (the paper's).
    _C.MODEL.IUQ.INTER.NORMALIZATION = "pairs"
    # What a foreign logit is scored against: "zero" (the paper: focal loss of the logit
    # against target 0) or "own" (the logit minus the query's mean logit on the sampled cells of
    # its own instance). "own" is shift-invariant: the query's output bias cancels, so the loss
    # cannot be lowered by lowering all of the query's logits (docs/method.md).
    _C.MODEL.IUQ.INTER.REFERENCE = "zero"
    # Implementation of the loss (iuq_d2.layers.inter_scene): "auto" (the Triton kernel on CUDA,
    # the tiled path elsewhere), "triton", "tiled" or "reference" (the plain PyTorch one).
    _C.MODEL.IUQ.INTER.IMPL = "auto"
    # Give no inter-scene gradient to the output bias of each query's dynamic head, so the loss
    # cannot silence other images by lowering all of the query's logits (its own object's too).
    _C.MODEL.IUQ.INTER.DETACH_OUTPUT_BIAS = False
    # Leave out the pairs whose pixel, placed in the query's image where the pair's relative
    # coordinates put it (its own position under "overlay", its offset from its instance's
    # centre moved to the query's location under "instance_centered", the query's location plus
    # its random anchor under "random"), falls on the query's own ground-truth instance, where
    # the mask loss asks the query to fire (needs NORMALIZATION "pairs"; a [queries, entries]
    # mask that the Triton kernel reads as the tiled path does).
    _C.MODEL.IUQ.INTER.EXCLUDE_OWN_FOOTPRINT = False
    # Only pairs whose pixel belongs to an instance of the query's own class (the look-alikes;
    # entries of unknown class, from checkpoints without classes, are left out). Needs
    # NORMALIZATION "pairs"; a pair mask, as EXCLUDE_OWN_FOOTPRINT.
    _C.MODEL.IUQ.INTER.SAME_CLASS_ONLY = False
    # Remove, per query, the component of the inter-scene gradient at the controller's output
    # that works against the mask loss's there (negative dot product; PCGrad's projection), so
    # that the loss is not followed into the query's own mask directly (ours; the shared weights
    # behind the controller's output still mix the queries' gradients; one extra partial
    # backward of the mask loss per step).
    _C.MODEL.IUQ.INTER.PROJECT_CONFLICT = False
    # Only queries whose own mask already has at least this dice coefficient (1 - its dice
    # loss this step, no gradient) are scored against other images: a per-query curriculum in
    # which a query learns its own object before it is asked to be unique (ours; 0 scores every
    # query, the paper's loss; 0.8 measured +0.6 mask AP on cells and -0.9 on shapes, 3 seeds,
    # docs/method.md). Needs LOSS_FORM "focal" or "confident".
    _C.MODEL.IUQ.INTER.MIN_OWN_DICE = 0.0
    # "focal": the paper's focal loss of every (query, foreign pixel) pair against 0, times
    # LOSS_WEIGHT. "dice" (ours): each query's mean squared probability on the foreign pixels,
    # times the entries one image holds, joins the denominator of its own dice loss, LOSS_WEIGHT
    # images' worth (1 is one other image), so it cannot trade its own mask for silence
    # elsewhere. Measured far below CondInst on both embedded datasets (seed-1 screen,
    # docs/method.md), hence not the default. Computed in plain PyTorch ([Q, hidden, N] tensors).
    # "confident": what the paper's released CondInst code penalises instead of the focal
    # loss: a pair's probability where it is at least CONFIDENT_THRESHOLD, 0 elsewhere, so only
    # confident firing is pushed down, and only to the threshold (the tiled path on any device).
    _C.MODEL.IUQ.INTER.LOSS_FORM = "focal"
    # The probability from which LOSS_FORM "confident" penalises a pair (the released code: 0.8,
    # on sigmoid(logit / 3): set MODEL.CONDINST.MASK_HEAD.LOGIT_TEMPERATURE 3 for that).
    _C.MODEL.IUQ.INTER.CONFIDENT_THRESHOLD = 0.8
    # Weight of loss_intra (ours; 0 leaves it out): the focal loss (FOCAL_ALPHA/GAMMA, target 0)
    # of the evaluated queries on the sampled cells of the *other instances of their own image*,
    # at their own positions (this process's entries of the step, at most MAX_BATCH_ENTRIES).
    # The paper's loss skips the own image; there, unlike in another image, almost every such
    # pair is one the mask loss agrees with (a tiny instance's fallback cell may lie on the
    # query's own), and a mask spilling onto its neighbours is the largest mask error
    # uniqueness can remove on crowded images (benchmarks/mask_oracle.py). Needs ENABLED; not
    # warmed up, and blind to QUERY_GRAD, DETACH_OUTPUT_BIAS and REFERENCE. Measured with the
    # default bank (seed 1, docs/method.md): level with CondInst on cells at 1, -3.1 mask AP at
    # 4, -9.6 on shapes at 1.
    _C.MODEL.IUQ.INTER.OWN_IMAGE_WEIGHT = 0.0

    # Instance-unique representations (ours): a supervised contrastive loss on the mask features
    # F at sampled instance cells of the global batch, so that F carries an instance's identity
    # the queries can be unique on. Training only. Off: far below CondInst on both embedded
    # datasets at weights 0.1 and 0.01 (seed 1), since CondInst's F encodes where a cell lies
    # within an object, not which object, and the term trades that for identity (docs/method.md).
    _C.MODEL.IUQ.CONTRAST = CN()
    _C.MODEL.IUQ.CONTRAST.ENABLED = False
    _C.MODEL.IUQ.CONTRAST.LOSS_WEIGHT = 0.1
    # Temperature of the cosine similarities (pixel-contrastive segmentation uses 0.1).
    _C.MODEL.IUQ.CONTRAST.TEMPERATURE = 0.1
    # Widths of the training-only projection F -> embedding (Linear layers, ReLU between); ()
    # contrasts F itself.
    _C.MODEL.IUQ.CONTRAST.PROJECTION_DIMS = (64, 32)
    # Cells sampled per instance (at least 2: an anchor needs a positive).
    _C.MODEL.IUQ.CONTRAST.PIXELS_PER_INSTANCE = 16
    # At most this many of a process's sampled cells are anchors (-1: all); every sampled cell
    # of the global batch is a key, so the cost per step is bounded by anchors x keys.
    _C.MODEL.IUQ.CONTRAST.MAX_ANCHORS = 1024
    # "all": every other instance's cells are negatives; "other_images": only those of other
    # images (dataset-level uniqueness without asking neighbours in one image to differ).
    _C.MODEL.IUQ.CONTRAST.NEGATIVES = "all"

    # Equivariance: every training image I gets a view g(I) (aligned crop, optional horizontal
    # flip, rescale), made in the dataset mapper before padding so that g is known exactly.
    _C.MODEL.IUQ.EQUI = CN()
    # Off by default: on both embedded datasets the query term was below the same views without
    # it in every mode measured (paired with BatchNorm or GroupNorm, with or without flips, and
    # extra): by 12 to 22 mask AP where the views alone train well, by less where paired views
    # alone already collapse (docs/method.md). On, it needs
    # INPUT.DATASET_MAPPER_NAME "iuq"; configs/IUQ-CondInst/MS_R_50_1x_equivariance.yaml is the
    # paper's recipe.
    _C.MODEL.IUQ.EQUI.ENABLED = False
    # "paired": the views are part of SOLVER.IMS_PER_BATCH (the loader yields IMS_PER_BATCH / 2
    # originals, each with its view), so an iteration costs about a baseline iteration.
    # "extra": IMS_PER_BATCH originals plus their views.
    _C.MODEL.IUQ.EQUI.MODE = "paired"
    # Weight of the query-equivariance loss: the dice mask loss of the queries predicted on g(I)
    # applied to g(F(I)), the warped representation of the original pass.
    _C.MODEL.IUQ.EQUI.QUERY_LOSS_WEIGHT = 3.0
    # Weight of the representation-equivariance loss between F(g(I)) and g(F(I)) over the cells
    # valid in both. Off: at weight 1 (l2) it cut mask AP from 24 to 10 in the shapes ablation,
    # where the query term alone cost 2 (README, "Measured results").
    _C.MODEL.IUQ.EQUI.FEAT_LOSS_WEIGHT = 0.0
    # Distance of that loss, per cell: "l2" (squared difference averaged over channels) or
    # "cosine" (1 - cosine similarity over channels).
    _C.MODEL.IUQ.EQUI.FEAT_DISTANCE = "l2"
    # Probability that the view is flipped horizontally.
    _C.MODEL.IUQ.EQUI.FLIP_PROB = 0.5
    # Range (min, max) of the crop's side relative to the image's, drawn per side; the crop is
    # aligned to the stride of the mask feature F so that warping F is pure indexing.
    _C.MODEL.IUQ.EQUI.CROP_SIZE = (0.6, 1.0)
    # Rescale factors of the cropped view, one drawn uniformly per image; 1.0 keeps the size.
    _C.MODEL.IUQ.EQUI.SCALES = (0.75, 1.0, 1.25)
