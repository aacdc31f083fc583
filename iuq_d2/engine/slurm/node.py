"""What runs on each node of a Slurm job: the rendezvous, the training processes, the requeue.

:class:`SlurmTrainJob` is what submitit runs once per node; it is checkpointable, so a preempted or
timed-out job is requeued with ``--resume`` and continues from the last checkpoint in the same
OUTPUT_DIR. slurm/train.sbatch calls :func:`run_on_node` directly.
"""

import multiprocessing
import os
import signal
from typing import List, Mapping, Optional, Sequence

import submitit

from ..cpu_threads import threads_per_process
from ..entry import build_argument_parser, run
from .rendezvous import rendezvous

# Slurm signals every process of a job step, and on preemption only the submitit process may react
# (checkpoint and requeue). A training process killed by the signal first would make ``launch()``
# raise and the job be recorded as failed; SlurmTrainJob.checkpoint stops the processes instead.
WORKER_IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


def with_resume(train_argv: Sequence[str]) -> List[str]:
    """``train_argv`` with ``--resume`` first: train_net.py's trailing config overrides take every
    token after them."""
    return list(train_argv) if "--resume" in train_argv else ["--resume", *train_argv]


def run_on_node(
    train_argv: Sequence[str], env: Mapping[str, str], port: Optional[int] = None
) -> None:
    """Train this node's share of a Slurm job: one process per GPU (or per ``--num-gpus`` on CPU).

    A rerun of a requeued job (SLURM_RESTART_COUNT > 0) always resumes, whoever requeued it: a
    fresh start would overwrite the checkpoints in OUTPUT_DIR. OMP_NUM_THREADS, unless set, gets
    :func:`~iuq_d2.engine.cpu_threads.threads_per_process` of the task's CPUs; the loader workers
    are not subtracted, as the job's environment is chosen before the config is read.
    """
    if int(env.get("SLURM_RESTART_COUNT") or 0) > 0:
        train_argv = with_resume(train_argv)
    args = build_argument_parser().parse_args([*rendezvous(env, port).argv(), *train_argv])
    threads = threads_per_process(int(env.get("SLURM_CPUS_PER_TASK") or 0), args.num_gpus)
    if threads and "OMP_NUM_THREADS" not in env:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by the processes launch() spawns
    run(args, WORKER_IGNORED_SIGNALS)


class SlurmTrainJob(submitit.helpers.Checkpointable):
    """What submitit runs once per node: set the job's environment, then :func:`run_on_node`.

    On preemption or time-out submitit calls :meth:`checkpoint` in node 0's task and requeues the
    job with the callable it returns. Training state lives in OUTPUT_DIR's checkpoints, not in
    this object, so the requeued job only needs ``--resume``.
    """

    def __init__(
        self,
        train_argv: Sequence[str],
        env: Optional[Mapping[str, str]] = None,
        port: Optional[int] = None,
    ):
        self.train_argv = list(train_argv)
        self.env = dict(env or {})
        self.port = port

    def __call__(self) -> None:
        os.environ.update(self.env)
        run_on_node(self.train_argv, os.environ, self.port)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """The job to requeue; also stops this node's training processes at once.

        The processes ignore Slurm's signals (:data:`WORKER_IGNORED_SIGNALS`); left alone they
        would go on training and writing checkpoints until Slurm kills them, KillWait seconds
        later.
        """
        for worker in multiprocessing.active_children():
            worker.kill()
        resumed = SlurmTrainJob(with_resume(self.train_argv), self.env, self.port)
        return submitit.helpers.DelayedSubmission(resumed)
