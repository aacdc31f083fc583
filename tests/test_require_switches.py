"""IUQ_REQUIRE_TRITON and IUQ_REQUIRE_CUDA turn a skip into a failure: in CI a Triton that does
not import, and on a GPU machine a CUDA that torch cannot see, must not pass as skips."""

import sys

import pytest
import torch

from .conftest import import_triton, require_cuda, require_or_skip


@pytest.fixture
def no_triton(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_missing_dependency_skips_by_default(monkeypatch):
    monkeypatch.delenv("IUQ_REQUIRE_X", raising=False)
    require_or_skip(True, "unused", "IUQ_REQUIRE_X")
    with pytest.raises(pytest.skip.Exception, match="no x"):
        require_or_skip(False, "no x", "IUQ_REQUIRE_X")
    monkeypatch.setenv("IUQ_REQUIRE_X", "0")
    with pytest.raises(pytest.skip.Exception):
        require_or_skip(False, "no x", "IUQ_REQUIRE_X")


def test_required_dependency_fails(monkeypatch):
    monkeypatch.setenv("IUQ_REQUIRE_X", "1")
    require_or_skip(True, "unused", "IUQ_REQUIRE_X")
    with pytest.raises(pytest.fail.Exception, match=r"no x \(IUQ_REQUIRE_X=1\)"):
        require_or_skip(False, "no x", "IUQ_REQUIRE_X")


@pytest.mark.usefixtures("no_triton")
def test_triton_that_does_not_import(monkeypatch):
    monkeypatch.delenv("IUQ_REQUIRE_TRITON", raising=False)
    with pytest.raises(pytest.skip.Exception, match="triton does not import"):
        import_triton()
    monkeypatch.setenv("IUQ_REQUIRE_TRITON", "1")
    with pytest.raises(pytest.fail.Exception, match="IUQ_REQUIRE_TRITON=1"):
        import_triton()


@pytest.mark.usefixtures("no_cuda")
def test_cuda_that_torch_cannot_see(monkeypatch):
    monkeypatch.delenv("IUQ_REQUIRE_CUDA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs a CUDA device"):
        require_cuda()
    monkeypatch.setenv("IUQ_REQUIRE_CUDA", "1")
    with pytest.raises(pytest.fail.Exception, match="IUQ_REQUIRE_CUDA=1"):
        require_cuda()
