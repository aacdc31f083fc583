"""The analysis scripts outside the package start as their docstrings say: ``python -m
tools.<script>`` from the repository root (their imports of ``iuq_d2`` and ``tools`` resolve).
Both in one interpreter, as ``-m`` runs them, from the root as the working directory."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("tools.measure_mask_oracle", "tools.measure_mechanism")
RUN_HELP = """
import runpy, sys
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        assert e.code == 0, (name, e.code)
    print("---")
"""


def test_cli_help_runs_from_the_repo_root():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the repository root comes from the working directory alone
    result = subprocess.run(
        [sys.executable, "-c", RUN_HELP, *SCRIPTS],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    helps = result.stdout.split("---\n")[:-1]
    assert len(helps) == len(SCRIPTS)
    for text in helps:
        assert text.startswith("usage:") and "--config-file" in text and "--weights" in text
