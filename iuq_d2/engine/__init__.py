from .checkpoint import (
    AtomicCheckpointer,
    CheckpointMismatchError,
    StrictCheckpointer,
    atomic_write,
)
from .trainer import Trainer

__all__ = [
    "AtomicCheckpointer",
    "CheckpointMismatchError",
    "StrictCheckpointer",
    "Trainer",
    "atomic_write",
]
