"""iuq_d2: CondInst and Instance-Unique Querying for detectron2.

Importing the package registers its meta-architectures, backbone, proposal generator and
builtin datasets with detectron2.
"""

from . import data, modeling
from .config import add_condinst_config, add_iuq_config

__all__ = ["add_condinst_config", "add_iuq_config", "data", "modeling"]
