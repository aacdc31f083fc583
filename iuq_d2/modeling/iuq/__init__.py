from .equivariance import EquivarianceCriterion
from .instance_contrast import InstanceContrastCriterion
from .inter_scene import InterSceneCriterion
from .iuq_condinst import TRAINING_ONLY_PREFIXES, IUQCondInst
from .query_bank import BankEntries, QueryBank

__all__ = [
    "BankEntries",
    "EquivarianceCriterion",
    "IUQCondInst",
    "InstanceContrastCriterion",
    "InterSceneCriterion",
    "QueryBank",
    "TRAINING_ONLY_PREFIXES",
]
