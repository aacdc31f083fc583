"""A real Slurm for the tests in this folder, started once per session.

``.ci/slurm-up.sh`` installs Debian's Slurm packages when they are missing and starts munged,
slurmctld and slurmd on 127.0.0.1 (fixture ``slurm_cluster``); with ``--two-nodes`` (fixture
``slurm_two_nodes``) it adds two compute nodes, each a slurmd in its own network namespace on a
private bridge (10.77.0.0/24). ``.ci/slurm-down.sh`` stops everything by PID afterwards. Where that
is impossible (not root, no apt, no network, a real Slurm already configured, no namespaces) the
tests are skipped with the reason, repeated in a banner at the end of the run so that a skip is
never mistaken for a pass. With IUQ_REQUIRE_SLURM=1 (CI) such a skip is an error instead.

One pytest session at a time drives the cluster: a second one waits for the first (a lock file),
since slurm-down.sh at the end of a session cancels every job.
"""

import fcntl
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from iuq_d2.data import ensure_shapes

REPO = Path(__file__).resolve().parents[2]
CI = REPO / ".ci"
# Every Slurm test ends within this, whatever happens to its jobs.
TEST_TIMEOUT_S = 240
LOCK_FILE = "/run/iuq_d2-slurm-tests.lock"
LOCK_WAIT_S = 900

_skip_reasons = []


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: needs a real Slurm, started by .ci/slurm-up.sh (root)"
    )


def pytest_collection_modifyitems(items):
    """No pytest-timeout limit on the Slurm tests: it would count the wait for another session's
    cluster (LOCK_WAIT_S) and the start of this one; ``_hard_timeout`` bounds each test."""
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.timeout(0))


def pytest_terminal_summary(terminalreporter):
    if _skip_reasons:
        title = "SLURM TESTS SKIPPED: the Slurm launcher was NOT tested"
        terminalreporter.write_sep("!", title, red=True)
        for reason in dict.fromkeys(_skip_reasons):
            terminalreporter.write_line(reason, red=True)


def _unavailable(reason: str):
    reason = f"no Slurm test cluster: {reason}"
    if os.environ.get("IUQ_REQUIRE_SLURM") == "1":
        pytest.fail(reason + " (IUQ_REQUIRE_SLURM=1)", pytrace=False)
    _skip_reasons.append(reason)
    pytest.skip(reason)


class _Cluster:
    """The session's cluster: brought up on first use, in the largest mode asked for."""

    def __init__(self):
        self.modes = set()
        self.failed = {}
        self.lock = None
        self.old_path = None

    def _lock(self):
        if self.lock is not None:
            return
        self.lock = open(LOCK_FILE, "w")
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another pytest session held {LOCK_FILE} for {LOCK_WAIT_S} s")
                time.sleep(1)

    def ensure(self, mode: str):
        """Bring the cluster up in ``mode`` ("one" or "two" nodes), or skip/fail the test."""
        if mode in self.modes:
            return
        if mode in self.failed:
            _unavailable(self.failed[mode])
        if os.geteuid() != 0:
            _unavailable("the tests must run as root to install and start Slurm")
        have_slurm = all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch"))
        if not have_slurm and not shutil.which("apt-get"):
            _unavailable("Slurm is not installed and there is no apt-get to install it")
        self._lock()
        argv = ["bash", str(CI / "slurm-up.sh"), *(["--two-nodes"] if mode == "two" else [])]
        try:
            up = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            self.down()
            self.failed[mode] = f"{' '.join(argv[1:])} ran longer than 300 s"
            _unavailable(self.failed[mode])
        # 2: installing failed, 3: a slurm.conf that is not ours, 4: no network namespaces
        if up.returncode in (2, 3, 4):
            self.failed[mode] = (
                f"{' '.join(argv[1:])} exited {up.returncode}: {up.stderr.strip()[-800:]}"
            )
            _unavailable(self.failed[mode])
        if up.returncode != 0:
            self.down()
            pytest.fail(f"{' '.join(argv[1:])} failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
        self.modes.update({"one", mode})  # two-node mode keeps the one node of one-node mode
        if self.old_path is None:
            # The cluster has no accounting, so the real sacct fails and submitit would never
            # learn that a job ended without a result; the stand-in answers from slurmctld.
            self.old_path = os.environ["PATH"]
            os.environ["PATH"] = f"{CI / 'slurm-shim'}{os.pathsep}{self.old_path}"

    def down(self):
        subprocess.run(["bash", str(CI / "slurm-down.sh")], timeout=120)
        self.modes.clear()

    def close(self):
        if self.old_path is not None:
            os.environ["PATH"] = self.old_path
        if self.lock is not None:
            self.down()
            self.lock.close()  # releases the lock


@pytest.fixture(scope="session")
def _slurm_session():
    cluster = _Cluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def slurm_cluster(_slurm_session):
    """The one-node cluster: node $(hostname -s) on 127.0.0.1, partitions debug and high."""
    _slurm_session.ensure("one")


@pytest.fixture(scope="session")
def slurm_two_nodes(_slurm_session):
    """Also nodes iuqn1 and iuqn2 in network namespaces, partitions pair and pairhigh."""
    _slurm_session.ensure("two")


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    """DATASETS.CUSTOM_COCO for a 16-image shapes dataset, registered as slurm_tiny."""
    root = tmp_path_factory.mktemp("slurm_shapes")
    json_file = ensure_shapes(str(root / "train"), 16, 5)
    return [["slurm_tiny", json_file, str(root / "train" / "images")]]


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
