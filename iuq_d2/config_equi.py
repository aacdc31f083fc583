"""Config keys of the equivariance part of IUQ (MODEL.IUQ.EQUI), see METHOD.md section 4.

Kept apart from config.py until ``add_iuq_config`` calls ``add_iuq_equivariance_config``.
"""
from detectron2.config import CfgNode as CN


def add_iuq_equivariance_config(cfg: CN) -> None:
    """Add MODEL.IUQ.EQUI (and MODEL.IUQ when it is missing) to ``cfg``."""
    _C = cfg
    if "IUQ" not in _C.MODEL:
        _C.MODEL.IUQ = CN()

    # Equivariance: every training image I gets a view g(I) (aligned crop, optional horizontal
    # flip, rescale), made in the dataset mapper before padding so that g is known exactly.
    _C.MODEL.IUQ.EQUI = CN()
    _C.MODEL.IUQ.EQUI.ENABLED = True
    # "paired": the views are part of SOLVER.IMS_PER_BATCH (the loader yields IMS_PER_BATCH / 2
    # originals, each with its view), so an iteration costs about a baseline iteration.
    # "extra": IMS_PER_BATCH originals plus their views.
    _C.MODEL.IUQ.EQUI.MODE = "paired"
    # Weight of the query-equivariance loss: the dice mask loss of the queries predicted on g(I)
    # applied to g(F(I)), the warped representation of the original pass.
    _C.MODEL.IUQ.EQUI.QUERY_LOSS_WEIGHT = 3.0
    # Weight of the representation-equivariance loss between F(g(I)) and g(F(I)) over the cells
    # valid in both. A proposal; the default is to be set by an ablation.
    _C.MODEL.IUQ.EQUI.FEAT_LOSS_WEIGHT = 1.0
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
