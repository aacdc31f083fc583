"""A DetectionCheckpointer whose files are never seen half-written."""

import os
import tempfile
from typing import IO, Any, Callable

import torch
from detectron2.checkpoint import DetectionCheckpointer


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file through a temporary sibling and a rename.

    A job killed mid-write (preemption, time limit, full disk) leaves the previous version of
    ``path`` intact instead of a truncated file that ``--resume`` would then fail to load.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """Saves checkpoints and the ``last_checkpoint`` tag with :func:`atomic_write`."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))
