"""IUQ_REQUIRE_TRITON and IUQ_REQUIRE_CUDA turn a skip into a failure: in CI a Triton that does
not import, and on a GPU machine a CUDA that torch cannot see, must not pass as skips."""

import sys
from typing import Callable

import pytest
import torch

from .conftest import import_triton, require_cuda, require_or_skip


def outcome(call: Callable[[], object]) -> str:
    """What ``call`` makes of the test: "ran", "skipped: <reason>" or "failed: <reason>". Caught
    here, so that a skip where a failure is due fails this test instead of skipping it."""
    try:
        call()
    except pytest.skip.Exception as e:
        return f"skipped: {e.msg}"
    except pytest.fail.Exception as e:
        return f"failed: {e.msg}"
    return "ran"


@pytest.fixture
def no_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("value", [None, "0", "1"])
def test_available_dependency_runs(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("IUQ_REQUIRE_X", raising=False)
    else:
        monkeypatch.setenv("IUQ_REQUIRE_X", value)
    assert outcome(lambda: require_or_skip(True, "no x", "IUQ_REQUIRE_X")) == "ran"


def test_missing_dependency_skips_unless_required(monkeypatch):
    monkeypatch.delenv("IUQ_REQUIRE_X", raising=False)
    missing = lambda: require_or_skip(False, "no x", "IUQ_REQUIRE_X")  # noqa: E731
    assert outcome(missing) == "skipped: no x"
    monkeypatch.setenv("IUQ_REQUIRE_X", "0")
    assert outcome(missing) == "skipped: no x"
    monkeypatch.setenv("IUQ_REQUIRE_X", "1")
    assert outcome(missing) == "failed: no x (IUQ_REQUIRE_X=1)"


@pytest.mark.usefixtures("no_triton")
def test_triton_that_does_not_import(monkeypatch):
    monkeypatch.delenv("IUQ_REQUIRE_TRITON", raising=False)
    assert outcome(import_triton).startswith("skipped: triton does not import")
    monkeypatch.setenv("IUQ_REQUIRE_TRITON", "1")
    assert outcome(import_triton).endswith("(IUQ_REQUIRE_TRITON=1)")


@pytest.mark.usefixtures("no_cuda")
def test_cuda_that_torch_cannot_see(monkeypatch):
    monkeypatch.delenv("IUQ_REQUIRE_CUDA", raising=False)
    assert outcome(require_cuda) == "skipped: needs a CUDA device"
    monkeypatch.setenv("IUQ_REQUIRE_CUDA", "1")
    assert outcome(require_cuda) == "failed: needs a CUDA device (IUQ_REQUIRE_CUDA=1)"
