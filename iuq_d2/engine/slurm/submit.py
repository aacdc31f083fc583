"""The command line of ``slurm/submit.py`` (and ``iuq_d2-slurm``): check train_net.py's arguments,
then submit one task per node through submitit, or, with ``--on-node`` inside an allocation
(``slurm/train.sbatch``), run this node's share at once.
"""

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import submitit

from ..cpu_threads import threads_per_process
from ..entry import build_argument_parser
from .node import SlurmTrainJob, run_on_node
from .rendezvous import PORT_BASE, PORT_SPAN

DEFAULT_JOB_DIR = "slurm_logs/%j"
# train_net.py options that every node derives from Slurm's environment; users must not pass them.
DERIVED_OPTIONS = ("--num-machines", "--machine-rank", "--dist-url")


def build_submit_parser() -> argparse.ArgumentParser:
    """Options of slurm/submit.py; train_net.py's own arguments follow ``--``."""
    parser = argparse.ArgumentParser(
        prog="slurm/submit.py",
        description="Submit iuq_d2 training to Slurm: one task per node, detectron2's launch() "
        "in each, requeued with --resume on preemption or time-out. See docs/slurm.md.",
        epilog="Everything after `--` goes to train_net.py, e.g. `-- --config-file "
        "configs/Demo/shapes_CondInst.yaml SOLVER.MAX_ITER 100`. --num-machines, --machine-rank "
        "and --dist-url are derived on every node and must not be given.",
    )
    res = parser.add_argument_group("resources")
    res.add_argument("--nodes", type=int, default=1, help="number of nodes (one task each)")
    res.add_argument(
        "--gpus-per-node",
        type=int,
        default=8,
        help="GPUs per node (default 8); also train_net's --num-gpus unless given after `--`. "
        "0: CPU nodes, gloo, and train_net's --num-gpus (default 1) processes per node",
    )
    res.add_argument("--cpus-per-task", type=int, help="CPUs of the one task on each node")
    res.add_argument("--mem", type=float, help="memory per node in GB")
    res.add_argument(
        "--timeout", type=int, default=24 * 60, help="time limit in minutes (default 1440)"
    )
    res.add_argument("--partition", help="Slurm partition")
    for name in ("account", "qos", "constraint", "comment"):
        res.add_argument(f"--{name}", help=f"passed to sbatch --{name}")

    job = parser.add_argument_group("job")
    job.add_argument("--job-name", default="iuq_d2")
    job.add_argument(
        "--job-dir",
        default=DEFAULT_JOB_DIR,
        help="submitit folder for the job's pickles and logs; %%j (the job id) is appended "
        "when missing. Training outputs go to the config's OUTPUT_DIR",
    )
    job.add_argument(
        "--max-timeouts",
        type=int,
        default=3,
        help="how many time-outs requeue the job (default 3; preemptions do not count)",
    )
    job.add_argument("--dry-run", action="store_true", help="print what would be submitted")

    net = parser.add_argument_group("network")
    net.add_argument(
        "--port",
        type=int,
        help=f"rendezvous port on the first node (default {PORT_BASE} + job id %% {PORT_SPAN})",
    )
    net.add_argument("--nccl-socket-ifname", help="NCCL_SOCKET_IFNAME in the job, e.g. ib0")
    net.add_argument("--gloo-socket-ifname", help="GLOO_SOCKET_IFNAME in the job, e.g. eth0")
    net.add_argument(
        "--on-node",
        action="store_true",
        help="inside an allocation (slurm/train.sbatch): run this node's share now instead of "
        "submitting; only --port and the interface options apply",
    )
    return parser


def _split_argv(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Our options before the first ``--``, train_net.py's after it."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def _has_option(argv: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


def _job_env(opts: argparse.Namespace) -> Dict[str, str]:
    """Network-interface variables for the job, only those the user chose."""
    chosen = {
        "NCCL_SOCKET_IFNAME": opts.nccl_socket_ifname,
        "GLOO_SOCKET_IFNAME": opts.gloo_socket_ifname,
    }
    return {k: v for k, v in chosen.items() if v}


def _train_argv(
    parser: argparse.ArgumentParser, argv: List[str], num_gpus: int
) -> Tuple[List[str], int]:
    """Check train_net.py's arguments before anything is queued; default ``--num-gpus``.

    Returns the arguments and the number of training processes per node.
    """
    derived = [o for o in DERIVED_OPTIONS if _has_option(argv, o)]
    if derived:
        parser.error(f"{', '.join(derived)}: derived from Slurm on every node, drop them")
    if not _has_option(argv, "--num-gpus"):
        argv = ["--num-gpus", str(num_gpus), *argv]
    return argv, build_argument_parser().parse_args(argv).num_gpus


def executor_parameters(opts: argparse.Namespace, num_processes: int) -> Dict[str, object]:
    """``AutoExecutor.update_parameters`` arguments: one task per node, Slurm options passed on.

    The job script exports PYTHONPATH, because jobs unpickle :class:`SlurmTrainJob` and so must
    import this package wherever they start, and OMP_NUM_THREADS (unless the submitting shell set
    it) to :func:`~iuq_d2.engine.cpu_threads.threads_per_process` of ``--cpus-per-task``, because
    only a value set before Python starts reaches torch in a process that imported it already.

    ``srun --kill-on-bad-exit=1``: a node whose task fails (its training raised, or a process was
    killed) ends the other nodes' tasks at once. Left alone, they would wait in a collective for
    the dead rank until ``--dist-timeout`` or, for a rank that died between collectives, longer.
    """
    package_root = str(Path(__file__).resolve().parents[3])
    setup = [f"export PYTHONPATH={shlex.quote(package_root)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    threads = threads_per_process(opts.cpus_per_task, num_processes)
    if threads:
        setup.append(f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{threads}}}")
    params: Dict[str, object] = {
        "name": opts.job_name,
        "nodes": opts.nodes,
        "tasks_per_node": 1,
        "timeout_min": opts.timeout,
        "slurm_setup": setup,
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
    }
    if opts.gpus_per_node > 0:
        params["gpus_per_node"] = opts.gpus_per_node
    if opts.cpus_per_task is not None:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.mem is not None:
        params["mem_gb"] = opts.mem
    for name in ("partition", "account", "qos", "constraint", "comment"):
        if getattr(opts, name) is not None:
            params[f"slurm_{name}"] = getattr(opts, name)
    return params


def _job_folder(job_dir: str) -> str:
    return job_dir if "%j" in job_dir else os.path.join(job_dir, "%j")


def _describe(opts: argparse.Namespace, train_argv: List[str], num_processes: int) -> str:
    """The dry-run report: what submit() would hand to submitit, and what each node would run."""
    port = opts.port if opts.port is not None else f"<{PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}>"
    rendezvous_argv = [
        "--num-machines",
        str(opts.nodes),
        "--machine-rank",
        "<SLURM_NODEID>",
        "--dist-url",
        f"tcp://<first host of SLURM_JOB_NODELIST>:{port}",
    ]
    env = " ".join(f"{k}={v}" for k, v in _job_env(opts).items()) or "(unchanged)"
    return "\n".join(
        [
            "dry run: nothing submitted",
            f"submitit folder: {Path(_job_folder(opts.job_dir)).absolute()}",
            f"time-outs requeued at most: {opts.max_timeouts}",
            "executor parameters: "
            + json.dumps(executor_parameters(opts, num_processes), indent=2, sort_keys=True),
            f"job environment: {env}",
            "each node runs the equivalent of:",
            "  " + shlex.join([sys.executable, "train_net.py", *rendezvous_argv, *train_argv]),
            "and is requeued with --resume after preemption or time-out",
        ]
    )


def submit(opts: argparse.Namespace, train_argv: List[str], num_processes: int) -> submitit.Job:
    """Submit :class:`SlurmTrainJob` with ``opts``; the returned job's folder holds its logs."""
    executor = submitit.AutoExecutor(
        folder=_job_folder(opts.job_dir), cluster="slurm", slurm_max_num_timeout=opts.max_timeouts
    )
    executor.update_parameters(**executor_parameters(opts, num_processes))
    return executor.submit(SlurmTrainJob(train_argv, _job_env(opts), opts.port))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The command line of ``slurm/submit.py``; ``--on-node`` is how ``slurm/train.sbatch`` runs."""
    parser = build_submit_parser()
    own, train_argv = _split_argv(sys.argv[1:] if argv is None else argv)
    opts = parser.parse_args(own)
    if opts.on_node:
        gpus = max(int(os.environ.get("SLURM_GPUS_ON_NODE") or 0), 1)
        os.environ.update(_job_env(opts))
        run_on_node(_train_argv(parser, train_argv, gpus)[0], os.environ, opts.port)
        return
    train_argv, num_processes = _train_argv(parser, train_argv, max(opts.gpus_per_node, 1))
    if opts.dry_run:
        print(_describe(opts, train_argv, num_processes))
        return
    job = submit(opts, train_argv, num_processes)
    print(f"Submitted job {job.job_id}")
    print(f"  logs: {job.paths.stdout} and {job.paths.stderr}")
    print(f"  follow: squeue -j {job.job_id}; cancel: scancel {job.job_id}")
