"""slurm/submit.py and slurm/train.sbatch against a real one-node Slurm (see conftest.py).

Two gloo processes on the one node, checkpoints, and a requeue that resumes in the same OUTPUT_DIR
after submitit's interrupt or a real preemption; helpers and the shrunk demo config: jobs.py.
"""

import socket
import subprocess

import pytest
import torch

from iuq_d2.engine.slurm.rendezvous import default_port

from .jobs import (
    FAILED_STATES,
    IUQ_DEMO_CONFIG,
    check_finished,
    check_resumed,
    finish,
    interrupt,
    query_bank,
    sbatch,
    sbatch_log,
    state,
    submit,
    train_argv,
    training_metrics,
    wait_for_state,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def test_submit_trains_two_gloo_processes(tmp_path, tiny_shapes):
    out = tmp_path / "out"
    job = submit(tmp_path, 2, train_argv(out, tiny_shapes, 40, 2))
    finish(job)
    check_finished(out, 40)
    assert [m["iteration"] for m in training_metrics(out)] == [19, 39]

    def completed():  # as submitit sees it, through the sacct stand-in (there is no accounting)
        return job.watcher.get_state(job.job_id, mode="force") == "COMPLETED"

    wait_until(completed, job, 30, "state COMPLETED from submitit")
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log
    host = socket.gethostname().split(".")[0]
    assert f"dist_url='tcp://{host}:{default_port(job.job_id)}'" in log
    assert "resume=False" in log


def test_interrupted_job_is_requeued_and_resumes(tmp_path, tiny_shapes):
    out, max_iter = tmp_path / "out", 120
    job = submit(tmp_path, 2, train_argv(out, tiny_shapes, max_iter, 2))
    wait_until((out / "model_0000039.pth").exists, job, 120, "checkpoint of iteration 39")
    interrupt(job)  # what Slurm does on preemption: SIGTERM, then USR2
    finish(job)
    check_resumed(out, max_iter, job)


def test_preempted_job_is_requeued_and_resumes(tmp_path, tiny_shapes):
    """IUQ-CondInst, whose query bank must come through the requeue as well."""
    out, max_iter = tmp_path / "out", 120
    # One process: submitit's own process trains, and is the one that Slurm's signal stops.
    # The bank is large enough not to wrap around in 120 iterations.
    argv = train_argv(
        out, tiny_shapes, max_iter, 1, IUQ_DEMO_CONFIG, "MODEL.IUQ.INTER.BANK_SIZE", "100000"
    )
    job = submit(tmp_path, 1, argv)
    wait_until((out / "model_0000039.pth").exists, job, 120, "checkpoint of iteration 39")
    # A job of the higher-tier partition that needs the whole node preempts ours.
    high = ["sbatch", "-Q", "-p", "high", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 1"]
    subprocess.run(high, check=True, timeout=30)
    finish(job)
    resumed = check_resumed(out, max_iter, job)

    before = query_bank(out / f"model_{resumed - 1:07d}.pth")
    after = query_bank(out / "model_final.pth")
    stored = int(before["ptr"])
    assert 0 < stored < int(after["ptr"]) <= 100000
    # The rerun appended to the bank it loaded instead of starting an empty one.
    for key in ("feats", "positions", "offsets", "image_ids", "valid"):
        assert torch.equal(after[key][:stored], before[key][:stored]), key


def test_plain_sbatch_script_trains(tmp_path, tiny_shapes):
    out = tmp_path / "out"
    job_id = sbatch(tmp_path, train_argv(out, tiny_shapes, 20, 2), "-p", "debug", "-c", "2")
    if (
        wait_for_state(job_id, {"COMPLETED"} | FAILED_STATES, 120)
        not in {"COMPLETED"} | FAILED_STATES
    ):
        subprocess.run(["scancel", job_id])
    text = sbatch_log(tmp_path, job_id)
    assert state(job_id) == "COMPLETED", text[-6000:]
    check_finished(out, 20)
    assert f"dist_url='tcp://{socket.gethostname().split('.')[0]}:{default_port(job_id)}'" in text
