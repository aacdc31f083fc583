from .checkpoint import AtomicCheckpointer, atomic_write
from .trainer import Trainer

__all__ = ["AtomicCheckpointer", "Trainer", "atomic_write"]
