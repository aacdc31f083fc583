"""slurm/submit.py and slurm/train.sbatch against a real one-node Slurm (see conftest.py).

The demo config is shrunk to a 16-image dataset at 96 pixels and trains at ~0.1 s per iteration,
so that the interesting parts dominate: the rendezvous, two gloo processes, checkpoints, and a
requeue that resumes in the same OUTPUT_DIR after submitit's interrupt or a real preemption.
"""

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
import torch

from iuq_d2.data import ensure_shapes
from iuq_d2.engine.slurm.rendezvous import default_port

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "Demo" / "shapes_CondInst.yaml"
IUQ_DEMO_CONFIG = REPO / "configs" / "Demo" / "shapes_IUQ.yaml"
# detectron2's DefaultTrainer writes metrics.json every 20 iterations and at the last one.
WRITER_PERIOD = 20
CHECKPOINT_PERIOD = 20
BASE_LR, GAMMA, LR_STEP = 0.02, 0.1, 100
# Job states after which no result pickle will come.
FAILED_STATES = {
    "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
}  # fmt: skip

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_shapes")
    json_file = ensure_shapes(str(root / "train"), 16, 5)
    return [["slurm_tiny", json_file, str(root / "train" / "images")]]


def _train_argv(out: Path, tiny_shapes, max_iter: int, num_gpus: int, config=DEMO_CONFIG, *more):
    """train_net.py arguments for a short run; ``more`` config overrides go last."""
    return [
        "--num-gpus", str(num_gpus),
        "--config-file", str(config),
        "DATASETS.CUSTOM_COCO", repr(tiny_shapes),
        "DATASETS.TRAIN", "('slurm_tiny',)", "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "SOLVER.BASE_LR", str(BASE_LR), "SOLVER.GAMMA", str(GAMMA), "SOLVER.WARMUP_ITERS", "5",
        "SOLVER.STEPS", f"({LR_STEP},)", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD), "OUTPUT_DIR", str(out), *more,
    ]  # fmt: skip


def _submit(tmp_path: Path, cpus: int, train_argv) -> submitit.SlurmJob:
    """Submit through slurm/submit.py as a user would, and follow the job it printed."""
    job_dir = tmp_path / "jobs"  # fresh per test: a new slurmctld state reuses job ids
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "slurm" / "submit.py"), "--partition", "debug",
            "--gpus-per-node", "0", "--cpus-per-task", str(cpus), "--timeout", "15",
            "--job-dir", str(job_dir), "--gloo-socket-ifname", "lo", "--", *train_argv,
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"Submitted job (\d+)", proc.stdout).group(1)
    return submitit.SlurmJob(folder=job_dir / "%j", job_id=job_id)


def _state(job_id: str) -> str:
    squeue = ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"]
    return subprocess.run(squeue, capture_output=True, text=True).stdout.strip()


def _logs(job: submitit.SlurmJob) -> str:
    parts = []
    for path in (job.paths.stdout, job.paths.stderr):
        text = path.read_text(errors="replace") if path.exists() else "(missing)"
        parts.append(f"--- {path} (tail)\n{text[-6000:]}")
    return "\n".join(parts)


def _wait_until(condition, job: submitit.SlurmJob, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        state = _state(job.job_id)
        if state in FAILED_STATES:
            pytest.fail(f"job {job.job_id} is {state} while waiting for {what}\n{_logs(job)}")
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job.job_id])
            pytest.fail(f"no {what} after {timeout} s (job {job.job_id} {state})\n{_logs(job)}")
        time.sleep(0.2)


def _finish(job: submitit.SlurmJob, timeout: float = 150) -> None:
    """Wait for the job's result with a deadline (``job.result()`` alone may wait forever)."""
    _wait_until(job.paths.result_pickle.exists, job, timeout, "result")
    try:
        job.result()
    except Exception as e:
        pytest.fail(f"job {job.job_id} failed: {e}\n{_logs(job)}")


def _training_metrics(out: Path):
    with open(out / "metrics.json") as f:
        return [m for m in map(json.loads, f) if "total_loss" in m]


def _expected_lr(iteration: int) -> float:
    return BASE_LR * (GAMMA if iteration >= LR_STEP else 1.0)


def _check_finished(out: Path, max_iter: int) -> None:
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    metrics = _training_metrics(out)
    assert metrics[-1]["iteration"] == max_iter - 1
    # The scheduler ran its whole schedule: lr dropped at LR_STEP, not earlier or later.
    for m in metrics:
        assert m["lr"] == pytest.approx(_expected_lr(m["iteration"])), m


def _check_resumed(out: Path, max_iter: int, job: submitit.SlurmJob) -> int:
    """One requeue, resumed from the last checkpoint, metrics continuous across it.

    Returns the iteration the rerun started from.
    """
    log = (out / "log.txt").read_text()
    starts = [int(s) for s in re.findall(r"Starting training from iteration (\d+)", log)]
    assert len(starts) == 2 and starts[0] == 0, starts
    resumed = starts[1]
    assert resumed > 0 and resumed % CHECKPOINT_PERIOD == 0, resumed
    assert f"Loading from {out / f'model_{resumed - 1:07d}.pth'}" in log
    stdout = job.paths.stdout.read_text()
    # submitit's words for a USR2 long before the time limit, whoever sent it.
    assert "this job is preempted" in stdout and f"Requeued job {job.job_id}" in stdout
    show = subprocess.run(["scontrol", "show", "job", job.job_id], capture_output=True, text=True)
    assert "Restarts=1 " in show.stdout, show.stdout

    iterations = [m["iteration"] for m in _training_metrics(out)]
    expected = [i for i in range(max_iter) if (i + 1) % WRITER_PERIOD == 0 or i == max_iter - 1]
    # What the rerun wrote: every writer iteration from the resumed one on, in order, at the end.
    rerun = [i for i in expected if i >= resumed]
    assert iterations[-len(rerun) :] == rerun, (iterations, resumed)
    # What the first run wrote before it was stopped: increasing, no writer iteration missing.
    first = iterations[: -len(rerun)]
    assert first == sorted(set(first)), first
    assert [i for i in first if i < resumed] == [i for i in expected if i < resumed], first
    _check_finished(out, max_iter)
    return resumed


def test_submit_trains_two_gloo_processes(tmp_path, tiny_shapes):
    out = tmp_path / "out"
    job = _submit(tmp_path, 2, _train_argv(out, tiny_shapes, 40, 2))
    _finish(job)
    _check_finished(out, 40)
    assert [m["iteration"] for m in _training_metrics(out)] == [19, 39]

    def completed():  # as submitit sees it, through the sacct stand-in (there is no accounting)
        return job.watcher.get_state(job.job_id, mode="force") == "COMPLETED"

    _wait_until(completed, job, 30, "state COMPLETED from submitit")
    log = (out / "log.txt").read_text()
    assert "World size: 2" in log
    host = socket.gethostname().split(".")[0]
    assert f"dist_url='tcp://{host}:{default_port(job.job_id)}'" in log
    assert "resume=False" in log


def test_interrupted_job_is_requeued_and_resumes(tmp_path, tiny_shapes):
    out, max_iter = tmp_path / "out", 120
    job = _submit(tmp_path, 2, _train_argv(out, tiny_shapes, max_iter, 2))
    _wait_until((out / "model_0000039.pth").exists, job, 120, "checkpoint of iteration 39")
    job._interrupt()  # what Slurm does on preemption: SIGTERM, then USR2
    _finish(job)
    _check_resumed(out, max_iter, job)


def _query_bank(checkpoint: Path):
    model = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    prefix = "inter_scene.bank."
    return {k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}


def test_preempted_job_is_requeued_and_resumes(tmp_path, tiny_shapes):
    """IUQ-CondInst, whose query bank must come through the requeue as well."""
    out, max_iter = tmp_path / "out", 120
    # One process: submitit's own process trains, and is the one that Slurm's signal stops.
    # The bank is large enough not to wrap around in 120 iterations.
    argv = _train_argv(
        out, tiny_shapes, max_iter, 1, IUQ_DEMO_CONFIG, "MODEL.IUQ.INTER.BANK_SIZE", "100000"
    )
    job = _submit(tmp_path, 1, argv)
    _wait_until((out / "model_0000039.pth").exists, job, 120, "checkpoint of iteration 39")
    # A job of the higher-tier partition that needs the whole node preempts ours.
    high = ["sbatch", "-Q", "-p", "high", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 1"]
    subprocess.run(high, check=True, timeout=30)
    _finish(job)
    resumed = _check_resumed(out, max_iter, job)

    before = _query_bank(out / f"model_{resumed - 1:07d}.pth")
    after = _query_bank(out / "model_final.pth")
    stored = int(before["ptr"])
    assert 0 < stored < int(after["ptr"]) <= 100000
    # The rerun appended to the bank it loaded instead of starting an empty one.
    for key in ("feats", "positions", "image_ids", "valid", "iters"):
        assert torch.equal(after[key][:stored], before[key][:stored]), key


def test_plain_sbatch_script_trains(tmp_path, tiny_shapes):
    out = tmp_path / "out"
    log = tmp_path / "sbatch-%j.out"
    proc = subprocess.run(
        ["sbatch", "--parsable", "-p", "debug", "-c", "2", f"--chdir={REPO}", f"--output={log}",
         f"--export=ALL,PYTHON={sys.executable}", str(REPO / "slurm" / "train.sbatch"),
         *_train_argv(out, tiny_shapes, 20, 2)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    log = Path(str(log).replace("%j", job_id))
    deadline = time.monotonic() + 120
    while _state(job_id) not in {"COMPLETED"} | FAILED_STATES:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id])
            break
        time.sleep(0.5)
    text = log.read_text() if log.exists() else "(no log)"
    assert _state(job_id) == "COMPLETED", text[-6000:]
    _check_finished(out, 20)
    assert f"dist_url='tcp://{socket.gethostname().split('.')[0]}:{default_port(job_id)}'" in text
