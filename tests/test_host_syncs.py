"""Host syncs of an IUQ training step, counted on the CPU by patching the calls that read a
tensor back to the host. On a GPU each one waits for every kernel queued before it; in the
backward it also stalls DDP's overlapped all-reduce."""

import contextlib
from collections import Counter

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from iuq_d2.modeling.iuq.inter_scene import InterSceneCriterion

from .conftest import make_input, tiny_config

EXPLICIT = ("item", "tolist", "cpu", "numpy")
IMPLICIT = ("__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def counting_syncs(monkeypatch):
    counts: Counter = Counter()
    region = ["step"]
    for name in EXPLICIT + IMPLICIT:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            counts[(region[0], _name)] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    forward = InterSceneCriterion.forward

    def criterion_region(self, *args, **kwargs):
        region[0] = "criterion"
        try:
            return forward(self, *args, **kwargs)
        finally:
            region[0] = "step"

    monkeypatch.setattr(InterSceneCriterion, "forward", criterion_region)
    yield counts, region
    monkeypatch.undo()


def _model():
    cfg = tiny_config(
        **{
            "MODEL.META_ARCHITECTURE": "IUQCondInst",
            "MODEL.IUQ.EQUI.ENABLED": False,
            "MODEL.IUQ.INTER.BANK_SIZE": 500,
            "MODEL.IUQ.INTER.PIXELS_PER_INSTANCE": 6,
            "MODEL.IUQ.INTER.MAX_QUERIES": 4,
            "MODEL.IUQ.INTER.MAX_BATCH_ENTRIES": 10,
        }
    )
    torch.manual_seed(0)
    return build_model(cfg)


def _batch():
    return [
        make_input(96, 128, [[10, 12, 60, 70], [50, 40, 120, 90]], [0, 2], seed=1),
        make_input(112, 80, [[5, 5, 30, 40]], [1], seed=2),
    ]


def test_criterion_and_backward_read_nothing_back(monkeypatch):
    model = _model()
    with EventStorage(start_iter=3):
        model(_batch())  # the bank fills: the next step samples it
        with counting_syncs(monkeypatch) as (counts, region):
            losses = model(_batch())
            region[0] = "backward"
            sum(losses.values()).backward()
    assert {k: v for k, v in counts.items() if k[0] in ("criterion", "backward")} == {}
    # The rest of the step, held where it is: the dense mask head's image bounds (one tolist in
    # the forward). Syncs inside torch ops (nonzero, boolean indexing) are not counted.
    assert counts == {("step", "tolist"): 1}
