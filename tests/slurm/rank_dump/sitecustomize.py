"""A test hook that every Python of a test job imports at start-up (``site`` imports the first
``sitecustomize`` on sys.path), when the job's PYTHONPATH names this folder.

With IUQ_TEST_RANK_DUMP=<folder> set, :class:`iuq_d2.engine.trainer.Trainer`'s ``train`` is
wrapped, when that module is first imported, so that every rank saves what only rank 0 would
otherwise write: its query bank (the model's ``inter_scene.bank.*`` state) after the last
iteration, and its parameters, with its rank and host name, to ``<folder>/rank<R>.pt``. The
two-node tests and the two-process training test compare them. Without the variable nothing is
changed; nothing is imported before iuq_d2 itself is.
"""

import importlib.abc
import importlib.util
import os
import sys

DUMP_DIR = os.environ.get("IUQ_TEST_RANK_DUMP")
TRAINER_MODULE = "iuq_d2.engine.trainer"


def _dump_after_train(trainer_class):
    train = trainer_class.train

    def train_and_dump(self):
        result = train(self)
        import socket

        import torch
        from detectron2.utils import comm

        model = getattr(self.model, "module", self.model)  # DDP's wrapped model
        bank = {
            k: v.detach().cpu().clone()
            for k, v in model.state_dict().items()
            if k.startswith("inter_scene.bank.")
        }
        rank = comm.get_rank()
        dump = {"rank": rank, "world_size": comm.get_world_size(), "host": socket.gethostname()}
        path = os.path.join(DUMP_DIR, f"rank{rank}.pt")
        params = {k: v.detach().cpu().clone() for k, v in model.named_parameters()}
        torch.save({**dump, "iteration": self.iter, "bank": bank, "params": params}, path + ".tmp")
        os.replace(path + ".tmp", path)
        return result

    trainer_class.train = train_and_dump


class _WrapTrainerOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TRAINER_MODULE:
            return None
        sys.meta_path.remove(self)  # let the ordinary finders find it
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module):
            exec_module(module)
            _dump_after_train(module.Trainer)

        spec.loader.exec_module = exec_and_wrap
        return spec


if DUMP_DIR:
    sys.meta_path.insert(0, _WrapTrainerOnImport())
