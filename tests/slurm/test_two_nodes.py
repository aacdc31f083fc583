"""Jobs over two real Slurm nodes, iuqn1 and iuqn2, each a slurmd in its own network namespace
(``.ci/slurm-up.sh --two-nodes``, see conftest.py): one gloo process per node, talking over the
namespaces' ``iuq0`` interfaces (``--gloo-socket-ifname iuq0``) through the bridge iuqbr0.

Besides training and requeueing across the two hosts, a rank that dies (SIGKILL) or hangs
(SIGSTOP) must end the job with an error within a bounded time, not at the time limit, and a node
whose dataset differs (its image folder hidden by a bind mount in its mount namespace only) must
fail with its own error instead of leaving the other node waiting. Helpers: jobs.py.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import submitit
import torch

from iuq_d2.data import ensure_shapes
from iuq_d2.engine.slurm.rendezvous import default_port

from .jobs import (
    DEMO_CONFIG,
    FAILED_STATES,
    IUQ_DEMO_CONFIG,
    check_finished,
    check_resumed,
    finish,
    log_text,
    logs,
    query_bank,
    sbatch,
    sbatch_log,
    scontrol_show,
    state,
    submit,
    train_argv,
    training_metrics,
    wait_for_state,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_two_nodes")]

NODES = ("iuqn1", "iuqn2")  # node 0 (rendezvous host) and node 1 of every job on "pair"
IFNAME = "iuq0"  # the interface in each namespace; iuqnX-h is its peer on the bridge
RANK_DUMP = Path(__file__).resolve().parent / "rank_dump"  # sitecustomize.py: per-rank banks
# Long enough for the two nodes to start and load data side by side on a busy 2-core machine.
DIST_TIMEOUT_S = 60
# What the dead- and hung-rank tests use: the bound on how long a rank waits for a silent peer.
SHORT_DIST_TIMEOUT_S = 15
# How long those tests wait for the job to end before failing: a deadline, not a measurement
# (the Slurm time limit is 15 minutes); what ended the job is read from the logs.
END_DEADLINE_S = 150


def _argv(out: Path, data, max_iter: int, timeout: float = DIST_TIMEOUT_S, config=DEMO_CONFIG):
    """One training process per node, the process-group timeout first (an option, not a key)."""
    return ["--dist-timeout", str(timeout), *train_argv(out, data, max_iter, 1, config)]


def _submit(tmp_path: Path, argv, env=None):
    return submit(tmp_path, 1, argv, partition="pair", nodes=2, ifname=IFNAME, env=env)


def _bridge_bytes() -> int:
    """Bytes through both nodes' veth links: the traffic between the namespaces (and slurmctld)."""
    stats = Path("/sys/class/net")
    return sum(
        int((stats / f"{node}-h" / "statistics" / f"{way}_bytes").read_text())
        for node in NODES
        for way in ("rx", "tx")
    )


def _workers(node: str, job_id: str):
    """PIDs of the training processes that launch() spawned for ``job_id`` on ``node``."""
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout
    found = []
    for pid in map(int, pids.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if b"spawn_main" in cmdline and f"SLURM_JOB_ID={job_id}".encode() in environ:
            found.append(pid)
    return found


def _rank1_log(out: Path) -> str:
    """detectron2's log of rank 1: log.txt.rank1 in the shared OUTPUT_DIR, written on iuqn2."""
    return (out / "log.txt.rank1").read_text()


def _check_two_hosts(out: Path, job_id: str) -> None:
    log = (out / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    assert f"dist_url='tcp://{NODES[0]}:{default_port(job_id)}'" in log
    assert "Rank of current process: 1. World size: 2" in _rank1_log(out)


def _check_failed_once(job: submitit.SlurmJob) -> str:
    """The job failed without being requeued: by the launcher (submitit logs "Requeued job"
    before its ``scontrol requeue``) or by Slurm (which counts Restarts), and cannot be any
    more, as Slurm requeues only a job it does not hold as ended."""
    job_id = job.job_id
    first = state(job_id)
    assert first in FAILED_STATES, first
    show = scontrol_show(job_id)
    assert "Restarts=0 " in show, show
    for task in (0, 1):
        assert "Requeued job" not in log_text(job, task), logs(job, (task,))
    assert state(job_id) == first
    return first


def test_submit_trains_one_rank_per_node(tmp_path, tiny_shapes):
    """IUQ-CondInst, world size 2 across the hosts: one query bank, the same on both ranks."""
    out, dump = tmp_path / "out", tmp_path / "dump"
    dump.mkdir()
    env = {"PYTHONPATH": str(RANK_DUMP), "IUQ_TEST_RANK_DUMP": str(dump)}
    traffic = _bridge_bytes()
    job = _submit(tmp_path, _argv(out, tiny_shapes, 40, config=IUQ_DEMO_CONFIG), env)
    finish(job, tasks=(0, 1))
    check_finished(out, 40)
    _check_two_hosts(out, job.job_id)
    # Metrics and checkpoints come from rank 0 alone: once each, not once per node.
    assert [m["iteration"] for m in training_metrics(out)] == [19, 39]
    saves = re.findall(r"Saving checkpoint to (\S+)", (out / "log.txt").read_text())
    assert [Path(s).name for s in saves] == [
        "model_0000019.pth",
        "model_0000039.pth",
        "model_final.pth",
    ], saves
    assert "Saving checkpoint" not in _rank1_log(out)
    # The gradients' all-reduce went over the namespaces' links: megabytes, not Slurm's chatter.
    assert _bridge_bytes() - traffic > 4_000_000

    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [(d["rank"], d["world_size"], d["host"]) for d in ranks] == [
        (0, 2, NODES[0]),
        (1, 2, NODES[1]),
    ]
    assert [d["iteration"] for d in ranks] == [40, 40]
    final = query_bank(out / "model_final.pth")
    assert int(final["ptr"]) > 0
    for d in ranks:
        bank = {k[len("inter_scene.bank.") :]: v for k, v in d["bank"].items()}
        assert bank.keys() == final.keys()
        for key, value in final.items():
            assert torch.equal(bank[key], value), (d["rank"], key)


def test_sbatch_trains_one_rank_per_node(tmp_path, tiny_shapes):
    out = tmp_path / "out"
    job_id = sbatch(
        tmp_path,
        _argv(out, tiny_shapes, 20),
        "-p", "pair", "-N", "2", "-c", "1",
        env=f"ALL,GLOO_SOCKET_IFNAME={IFNAME}",
    )  # fmt: skip
    final = wait_for_state(job_id, {"COMPLETED"} | FAILED_STATES, 150)
    if final not in {"COMPLETED"} | FAILED_STATES:
        subprocess.run(["scancel", job_id])
    text = sbatch_log(tmp_path, job_id)
    assert state(job_id) == "COMPLETED", text[-6000:]
    assert f"iuq_d2: job {job_id} on iuqn[1-2], restart 0" in text
    check_finished(out, 20)
    _check_two_hosts(out, job_id)
    assert [m["iteration"] for m in training_metrics(out)] == [19]


def test_preempted_two_node_job_resumes_on_both_nodes(tmp_path, tiny_shapes):
    out, max_iter = tmp_path / "out", 120
    job = _submit(tmp_path, _argv(out, tiny_shapes, max_iter))
    wait_until((out / "model_0000039.pth").exists, job, 150, "checkpoint of iteration 39", (0, 1))
    # A higher-tier job that needs all of the second node: Slurm preempts ours on both nodes.
    high = ["sbatch", "-Q", "-p", "pairhigh", "-w", NODES[1], "-c", "2", "-o", "/dev/null"]
    subprocess.run([*high, "--wrap", "sleep 1"], check=True, timeout=30)
    finish(job, tasks=(0, 1))
    resumed = check_resumed(out, max_iter, job)
    _check_two_hosts(out, job.job_id)
    # Rank 1 restarted on the other host from the same checkpoint.
    rank1 = _rank1_log(out)
    starts = [int(s) for s in re.findall(r"Starting training from iteration (\d+)", rank1)]
    assert starts == [0, resumed], starts
    assert f"Loading from {out / f'model_{resumed - 1:07d}.pth'}" in rank1


def _signal_rank1_until_the_end(tmp_path, tiny_shapes, sig) -> submitit.SlurmJob:
    """Train, then ``sig`` node 1's training process; the job, once it has failed."""
    out = tmp_path / "out"
    job = _submit(tmp_path, _argv(out, tiny_shapes, 10000, SHORT_DIST_TIMEOUT_S))
    wait_until((out / "model_0000019.pth").exists, job, 150, "checkpoint of iteration 19", (0, 1))
    workers = _workers(NODES[1], job.job_id)
    assert len(workers) == 1, workers
    os.kill(workers[0], sig)
    end = wait_for_state(job.job_id, FAILED_STATES | {"COMPLETED"}, END_DEADLINE_S)
    if end not in FAILED_STATES:
        subprocess.run(["scancel", job.job_id])
        pytest.fail(
            f"job {job.job_id} {end} {END_DEADLINE_S} s after the signal\n{logs(job, (0, 1))}"
        )
    _check_failed_once(job)
    return job


def _gloo_timeouts_ms(text: str):
    """The timeouts (ms) of the gloo operations that timed out, as gloo words its error."""
    return [int(ms) for ms in re.findall(r"Timed out waiting (\d+)ms", text)]


def test_killed_rank_fails_the_job(tmp_path, tiny_shapes):
    """Node 1's launcher sees its process die and fails its task, and node 0 ends without
    waiting out its --dist-timeout (the closed connections, or srun --kill-on-bad-exit)."""
    job = _signal_rank1_until_the_end(tmp_path, tiny_shapes, signal.SIGKILL)
    assert "terminated with signal SIGKILL" in log_text(job, 1), logs(job, (1,))
    assert _gloo_timeouts_ms(log_text(job, 0)) == [], logs(job, (0,))


def test_hung_rank_times_out_and_fails_the_job(tmp_path, tiny_shapes):
    """A stopped process closes no connection: rank 0 waits --dist-timeout in gloo (not
    detectron2's 30 minutes), then fails."""
    job = _signal_rank1_until_the_end(tmp_path, tiny_shapes, signal.SIGSTOP)
    timeouts = _gloo_timeouts_ms(log_text(job, 0))
    assert timeouts and set(timeouts) == {SHORT_DIST_TIMEOUT_S * 1000}, logs(job, (0,))


@pytest.fixture
def hidden_on_node1(tmp_path):
    """A dataset whose image folder, on node 1 (iuqn2) only, is an empty folder: a bind mount
    in the mount namespace of that node's slurmd, which its jobs inherit."""
    json_file = ensure_shapes(str(tmp_path / "data"), 16, 5)
    images = tmp_path / "data" / "images"
    empty = tmp_path / "empty"
    empty.mkdir()
    slurmd = Path(f"/run/slurmd-{NODES[1]}.pid").read_text().strip()
    in_node1 = ["nsenter", "-t", slurmd, "-m", "--"]
    subprocess.run([*in_node1, "mount", "--bind", str(empty), str(images)], check=True)
    try:
        assert any(images.iterdir())  # still there outside node 1
        yield [["slurm_tiny", json_file, str(images)]], images
    finally:
        subprocess.run([*in_node1, "umount", str(images)], check=True)


def test_node_missing_the_images_fails_with_its_error(tmp_path, hidden_on_node1):
    data, images = hidden_on_node1
    job = _submit(tmp_path, _argv(tmp_path / "out", data, 10000))
    start = time.monotonic()
    end = wait_for_state(job.job_id, FAILED_STATES | {"COMPLETED"}, 150)
    took = time.monotonic() - start
    if end not in FAILED_STATES:
        subprocess.run(["scancel", job.job_id])
        pytest.fail(f"job {job.job_id} {end} after {took:.0f} s\n{logs(job, (0, 1))}")
    _check_failed_once(job)
    node1, node0 = log_text(job, 1), log_text(job, 0)
    # The error comes from the node at fault, naming it and the missing file...
    assert f"hostname={NODES[1]}" in node1, logs(job, (1,))
    missing = rf"(FileNotFoundError|No such file).*{re.escape(str(images))}"
    assert re.search(missing, node1), logs(job, (1,))
    # ...and node 0, which has the images, did not wait for it until a timeout.
    assert f"hostname={NODES[0]}" in node0
    assert "FileNotFoundError" not in node0 and "Timed out" not in node0, logs(job, (0,))
