"""What the Slurm tests share: short training arguments, submitting, waiting, reading the outputs.

The demo config is shrunk to a 16-image dataset at 96 pixels and trains at ~0.1 s per iteration,
so that the interesting parts dominate: the rendezvous, the gloo processes, checkpoints, requeues.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pytest
import submitit
import torch

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
BANK_PREFIX = "inter_scene.bank."


def train_argv(out: Path, tiny_shapes, max_iter: int, num_gpus: int, config=DEMO_CONFIG, *more):
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


def submit(
    tmp_path: Path,
    cpus: int,
    argv: Sequence[str],
    *,
    partition: str = "debug",
    nodes: int = 1,
    ifname: str = "lo",
    env: Optional[Mapping[str, str]] = None,
) -> submitit.SlurmJob:
    """Submit through slurm/submit.py as a user would, and follow the job it printed.

    ``env`` is added to the submitting environment, which sbatch passes on to the job.
    """
    job_dir = tmp_path / "jobs"  # fresh per test: a new slurmctld state reuses job ids
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "slurm" / "submit.py"), "--partition", partition,
            "--nodes", str(nodes), "--gpus-per-node", "0", "--cpus-per-task", str(cpus),
            "--timeout", "15", "--job-dir", str(job_dir), "--gloo-socket-ifname", ifname,
            "--", *argv,
        ],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=None if env is None else {**os.environ, **env},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"Submitted job (\d+)", proc.stdout).group(1)
    return submitit.SlurmJob(folder=job_dir / "%j", job_id=job_id)


def sbatch(tmp_path: Path, argv: Sequence[str], *sbatch_options: str, env: str = "ALL") -> str:
    """Submit slurm/train.sbatch with ``argv`` for train_net.py; the job id.

    The log is ``tmp_path/sbatch-<id>.out`` (:func:`sbatch_log`); ``env`` is sbatch's --export.
    """
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={REPO}", f"--output={tmp_path / 'sbatch-%j.out'}",
         f"--export={env},PYTHON={sys.executable}", *sbatch_options,
         str(REPO / "slurm" / "train.sbatch"), *argv],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def sbatch_log(tmp_path: Path, job_id: str) -> str:
    log = tmp_path / f"sbatch-{job_id}.out"
    return log.read_text(errors="replace") if log.exists() else "(no log)"


def state(job_id: str) -> str:
    squeue = ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"]
    return subprocess.run(squeue, capture_output=True, text=True).stdout.strip()


def scontrol_show(job_id: str) -> str:
    show = ["scontrol", "show", "job", job_id]
    return subprocess.run(show, capture_output=True, text=True).stdout


def logs(job: submitit.SlurmJob, tasks: Sequence[int] = (0,)) -> str:
    """The tails of the submitit logs of ``tasks`` (one task per node)."""
    parts = []
    for task in tasks:
        paths = submitit.core.utils.JobPaths(job.paths.folder, job.job_id, task)
        for path in (paths.stdout, paths.stderr):
            text = path.read_text(errors="replace") if path.exists() else "(missing)"
            parts.append(f"--- {path} (tail)\n{text[-6000:]}")
    return "\n".join(parts)


def log_text(job: submitit.SlurmJob, task: int) -> str:
    """The whole submitit log (stdout, then stderr) of one task, for assertions."""
    paths = submitit.core.utils.JobPaths(job.paths.folder, job.job_id, task)
    return "".join(
        p.read_text(errors="replace") for p in (paths.stdout, paths.stderr) if p.exists()
    )


def wait_until(condition, job: submitit.SlurmJob, timeout: float, what: str, tasks=(0,)) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        job_state = state(job.job_id)
        if job_state in FAILED_STATES:
            pytest.fail(
                f"job {job.job_id} is {job_state} while waiting for {what}\n{logs(job, tasks)}"
            )
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job.job_id])
            pytest.fail(
                f"no {what} after {timeout} s (job {job.job_id} {job_state})\n{logs(job, tasks)}"
            )
        time.sleep(0.2)


def interrupt(job: submitit.SlurmJob) -> None:
    """What ``job._interrupt()`` sends on preemption, SIGTERM then USR2, with USR2 sent only
    once submitit has received SIGTERM: Slurm forwards two quick ``scancel --signal`` calls in
    either order on a loaded machine, and a SIGTERM that lands after USR2 kills the
    ``scontrol requeue`` that USR2 started."""
    signal = ["scancel", job.job_id, "--signal"]
    subprocess.run([*signal, "SIGTERM"], check=True, timeout=30)
    wait_until(lambda: "Bypassing signal SIGTERM" in log_text(job, 0), job, 60, "SIGTERM")
    usr_signal = submitit.slurm.slurm.SlurmJobEnvironment.USR_SIG
    subprocess.run([*signal, usr_signal], check=True, timeout=30)


def wait_for_state(job_id: str, states, timeout: float) -> str:
    """Poll squeue until the job is in one of ``states``; its state then, or the last one seen."""
    deadline = time.monotonic() + timeout
    while (job_state := state(job_id)) not in states and time.monotonic() < deadline:
        time.sleep(0.2)
    return job_state


def finish(job: submitit.SlurmJob, timeout: float = 150, tasks=(0,)) -> None:
    """Wait for the job's result with a deadline (``job.result()`` alone may wait forever)."""
    wait_until(job.paths.result_pickle.exists, job, timeout, "result", tasks)
    try:
        job.result()
    except Exception as e:
        pytest.fail(f"job {job.job_id} failed: {e}\n{logs(job, tasks)}")


def training_metrics(out: Path):
    with open(out / "metrics.json") as f:
        return [m for m in map(json.loads, f) if "total_loss" in m]


def expected_lr(iteration: int) -> float:
    return BASE_LR * (GAMMA if iteration >= LR_STEP else 1.0)


def check_finished(out: Path, max_iter: int, stopped_line: int | None = None) -> None:
    """A finished run; ``stopped_line`` indexes the line a stopped first run wrote last."""
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    metrics = training_metrics(out)
    assert metrics[-1]["iteration"] == max_iter - 1
    # The line detectron2's writer adds as a job is stopped mid-iteration lacks what the hooks
    # log after the step (lr). Only that line may lack it; it need not be a writer iteration.
    assert all("lr" in m for i, m in enumerate(metrics) if i != stopped_line), metrics
    # The scheduler ran its whole schedule: lr dropped at LR_STEP, not earlier or later.
    for m in metrics:
        if "lr" in m:
            assert m["lr"] == pytest.approx(expected_lr(m["iteration"])), m


def check_resumed(out: Path, max_iter: int, job: submitit.SlurmJob) -> int:
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
    show = scontrol_show(job.job_id)
    assert "Restarts=1 " in show, show

    iterations = [m["iteration"] for m in training_metrics(out)]
    expected = [i for i in range(max_iter) if (i + 1) % WRITER_PERIOD == 0 or i == max_iter - 1]
    # What the rerun wrote: every writer iteration from the resumed one on, in order, at the end.
    rerun = [i for i in expected if i >= resumed]
    assert iterations[-len(rerun) :] == rerun, (iterations, resumed)
    # What the first run wrote before it was stopped: increasing, no writer iteration missing.
    first = iterations[: -len(rerun)]
    assert first == sorted(set(first)), first
    assert [i for i in first if i < resumed] == [i for i in expected if i < resumed], first
    check_finished(out, max_iter, stopped_line=len(first) - 1)
    return resumed


def query_bank(checkpoint: Path):
    """The query bank of a checkpoint: its ``inter_scene.bank.*`` entries, without the prefix."""
    model = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    return {k[len(BANK_PREFIX) :]: v for k, v in model.items() if k.startswith(BANK_PREFIX)}
