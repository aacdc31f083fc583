"""The analysis scripts outside the package start as their docstrings say: ``python -m
tools.<script>`` from the repository root (their imports of ``iuq_d2`` and ``tools`` resolve)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script", ["measure_mask_oracle", "measure_mechanism"])
def test_cli_help_runs_from_the_repo_root(script):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the repository root comes from the working directory alone
    result = subprocess.run(
        [sys.executable, "-m", f"tools.{script}", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "--config-file" in result.stdout
    assert "--weights" in result.stdout
