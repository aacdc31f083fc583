"""A real one-node Slurm for the tests in this folder, started once per session.

``.ci/slurm-up.sh`` installs Debian's Slurm packages when they are missing and starts munged,
slurmctld and slurmd on 127.0.0.1; ``.ci/slurm-down.sh`` stops them by PID afterwards. Where that
is impossible (not root, no apt, no network, a real Slurm already configured) the tests are
skipped with the reason, repeated in a banner at the end of the run so that a skip is never
mistaken for a pass. With IUQ_REQUIRE_SLURM=1 (CI) such a skip is an error instead.
"""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CI = REPO / ".ci"
# Every Slurm test ends within this, whatever happens to its jobs.
TEST_TIMEOUT_S = 240

_skip_reasons = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: needs a real one-node Slurm, started by .ci/slurm-up.sh (root)"
    )


def pytest_terminal_summary(terminalreporter):
    if _skip_reasons:
        title = "SLURM TESTS SKIPPED: the Slurm launcher was NOT tested"
        terminalreporter.write_sep("!", title, red=True)
        for reason in _skip_reasons:
            terminalreporter.write_line(reason, red=True)


def _unavailable(reason: str):
    reason = f"no Slurm test cluster: {reason}"
    if os.environ.get("IUQ_REQUIRE_SLURM") == "1":
        pytest.fail(reason + " (IUQ_REQUIRE_SLURM=1)", pytrace=False)
    _skip_reasons.append(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the cluster (idempotent), put the sacct stand-in first on PATH, stop it at the end.

    The cluster has no accounting, so the real sacct fails and submitit would never learn that
    a job ended without a result; the stand-in answers from slurmctld's memory instead.
    """
    if os.geteuid() != 0:
        _unavailable("the tests must run as root to install and start Slurm")
    have_slurm = all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not have_slurm and not shutil.which("apt-get"):
        _unavailable("Slurm is not installed and there is no apt-get to install it")
    try:
        up = subprocess.run(
            ["bash", str(CI / "slurm-up.sh")], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(CI / "slurm-down.sh")], timeout=120)
        _unavailable(".ci/slurm-up.sh ran longer than 300 s")
    if up.returncode in (2, 3):  # 2: installing failed, 3: a slurm.conf that is not ours
        _unavailable(f".ci/slurm-up.sh exited {up.returncode}: {up.stderr.strip()[-800:]}")
    if up.returncode != 0:
        subprocess.run(["bash", str(CI / "slurm-down.sh")], timeout=120)
        pytest.fail(f".ci/slurm-up.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{CI / 'slurm-shim'}{os.pathsep}{old_path}"
    try:
        yield
    finally:
        os.environ["PATH"] = old_path
        subprocess.run(["bash", str(CI / "slurm-down.sh")], timeout=120)


@pytest.fixture(autouse=True)
def _hard_timeout(request):
    """Fail a Slurm test that overruns instead of hanging the suite (pytest-timeout's job)."""
    if request.node.get_closest_marker("slurm") is None:
        yield
        return

    def overrun(signum, frame):
        raise TimeoutError(f"{request.node.name} ran longer than {TEST_TIMEOUT_S} s")

    previous = signal.signal(signal.SIGALRM, overrun)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
