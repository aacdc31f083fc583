from .equivariance import EquivarianceCriterion
from .inter_scene import InterSceneCriterion
from .iuq_condinst import TRAINING_ONLY_PREFIXES, IUQCondInst
from .query_bank import BankEntries, QueryBank

__all__ = [
    "BankEntries",
    "EquivarianceCriterion",
    "IUQCondInst",
    "InterSceneCriterion",
    "QueryBank",
    "TRAINING_ONLY_PREFIXES",
]
