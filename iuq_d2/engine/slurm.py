"""Slurm launcher: one task per node, detectron2's ``launch()`` inside it, requeue on preemption.

detectron2's ``launch()`` must be told ``--num-machines``, ``--machine-rank`` and ``--dist-url`` on
every node. Inside a Slurm job all three follow from the job's environment: :func:`rendezvous`
derives them (a pure function of that environment, so it is tested without Slurm and needs no
``scontrol`` on the node). :class:`SlurmTrainJob` is what submitit runs on each node; it is
checkpointable, so a preempted or timed-out job is requeued with ``--resume`` and continues from the
last checkpoint in the same ``OUTPUT_DIR``. :func:`main` is the command line of ``slurm/submit.py``.
"""
import argparse
import itertools
import json
import multiprocessing
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import submitit

__all__ = [
    "PORT_BASE",
    "PORT_SPAN",
    "Rendezvous",
    "SlurmTrainJob",
    "build_submit_parser",
    "default_port",
    "executor_parameters",
    "expand_hostlist",
    "main",
    "rendezvous",
    "run_on_node",
    "submit",
    "threads_per_process",
]

# Rendezvous ports are PORT_BASE + job id % PORT_SPAN: below Linux's ephemeral range (32768+), so
# an outgoing connection on the first node cannot already hold the port.
PORT_BASE = 20000
PORT_SPAN = 10000
DEFAULT_JOB_DIR = "slurm_logs/%j"
# train_net.py options that every node derives from Slurm's environment; users must not pass them.
DERIVED_OPTIONS = ("--num-machines", "--machine-rank", "--dist-url")


def _expand_brackets(body: str) -> List[str]:
    """``01-03,7`` -> ``["01", "02", "03", "7"]``: a range keeps the zero padding of its start."""
    out = []
    for item in body.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad range {item!r} in hostlist brackets [{body}]")
        if not sep:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in hostlist brackets [{body}]")
        out.extend(str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1))
    return out


def expand_hostlist(hostlist: str) -> List[str]:
    """Expand a Slurm hostlist such as ``gpu[01-03,7],cpu-a`` into host names, in Slurm's order.

    Done here rather than with ``scontrol show hostnames`` so that the rendezvous stays a pure
    function of the environment. Several bracket groups in one name (``r[1-2]n[1-2]``) expand to
    their product, the first group outermost.
    """
    groups, depth, start = [], 0, 0
    for i, ch in enumerate(hostlist):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            groups.append(hostlist[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise ValueError(f"unbalanced brackets in hostlist {hostlist!r}")
    if depth != 0:
        raise ValueError(f"unbalanced brackets in hostlist {hostlist!r}")
    groups.append(hostlist[start:])

    hosts = []
    for group in groups:
        if not group.strip():
            raise ValueError(f"empty host name in hostlist {hostlist!r}")
        parts = re.split(r"\[([^\]]*)\]", group.strip())
        # re.split with one capture group alternates literal text and bracket bodies.
        choices = [[p] if i % 2 == 0 else _expand_brackets(p) for i, p in enumerate(parts)]
        hosts.extend("".join(name) for name in itertools.product(*choices))
    return hosts


def default_port(job_id: str) -> int:
    """The rendezvous port of a job: PORT_BASE + job id % PORT_SPAN.

    Every node computes the same port without exchanging anything, and two jobs whose ids differ
    by less than PORT_SPAN never collide even if they share their first node. A requeued job keeps
    its id and so its port; Slurm has ended all its processes before the rerun starts.
    """
    if not job_id.isdigit():
        raise ValueError(f"SLURM_JOB_ID must be a number, got {job_id!r}")
    return PORT_BASE + int(job_id) % PORT_SPAN


@dataclass(frozen=True)
class Rendezvous:
    """Where one node stands in a job: the arguments of detectron2's ``launch()`` that vary."""

    num_machines: int
    machine_rank: int
    dist_url: str

    def argv(self) -> List[str]:
        """The train_net.py options that carry this rendezvous."""
        return [
            "--num-machines",
            str(self.num_machines),
            "--machine-rank",
            str(self.machine_rank),
            "--dist-url",
            self.dist_url,
        ]


def _get(env: Mapping[str, str], *names: str) -> str:
    for name in names:
        if env.get(name):
            return env[name]
    raise ValueError(f"{' or '.join(names)} is not set: not inside a Slurm job step")


def rendezvous(env: Mapping[str, str], port: Optional[int] = None) -> Rendezvous:
    """Derive this node's rank, the node count and a ``tcp://<first host>:<port>`` URL.

    Args:
        env: a Slurm task's environment (``os.environ`` inside ``srun``); it needs SLURM_JOB_ID,
            SLURM_NODEID and SLURM_JOB_NODELIST (SLURM_NODELIST on old Slurm), and uses
            SLURM_JOB_NUM_NODES (or SLURM_NNODES) as a consistency check.
        port: the rendezvous port; default :func:`default_port` of the job id.

    Node 0 of a job is the first host of its node list, so it hosts the rendezvous. Slurm
    starts one task per node, hence the node id is the machine rank.
    """
    job_id = _get(env, "SLURM_JOB_ID")
    hosts = expand_hostlist(_get(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST"))
    num_nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or len(hosts))
    if num_nodes != len(hosts):
        raise ValueError(f"Slurm reports {num_nodes} nodes but its node list names {len(hosts)}")
    rank = int(_get(env, "SLURM_NODEID"))
    if not 0 <= rank < num_nodes:
        raise ValueError(f"SLURM_NODEID={rank} is outside 0..{num_nodes - 1}")
    if port is None:
        port = default_port(job_id)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not a TCP port")
    return Rendezvous(num_nodes, rank, f"tcp://{hosts[0]}:{port}")


def _worker(train_main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """Run ``train_main`` in one training process of this node.

    In a process that ``launch()`` spawned, SIGTERM and SIGUSR2 are ignored: Slurm signals every
    process of a job step, and on preemption only the submitit process may react (checkpoint and
    requeue). A worker killed by the signal first would make ``launch()`` raise and the job be
    recorded as failed; :meth:`SlurmTrainJob.checkpoint` stops the workers instead. After training
    such a worker leaves through :func:`iuq_d2.engine.launch.leave_spawned_process`.
    """
    spawned = multiprocessing.parent_process() is not None
    if spawned:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    train_main(args)
    from iuq_d2.engine.launch import leave_spawned_process

    leave_spawned_process()


def threads_per_process(cpus: Optional[int], num_processes: int) -> Optional[int]:
    """OMP_NUM_THREADS that shares a task's CPUs among the node's training processes.

    As torchrun does: left alone, every process runs one thread per core it sees, and
    oversubscribed threads spin; on a busy 2-core machine the demo model trained 30 to 100 times
    slower. It must be set before a process imports torch (torch.set_num_threads later did not
    help), hence in the job's environment. None when Slurm was not told the CPUs.
    """
    if not cpus:
        return None
    return max(1, cpus // max(1, num_processes))


def _with_resume(train_argv: Sequence[str]) -> List[str]:
    return list(train_argv) if "--resume" in train_argv else ["--resume", *train_argv]


def run_on_node(
    train_argv: Sequence[str], env: Mapping[str, str], port: Optional[int] = None
) -> None:
    """Train this node's share of a Slurm job: one process per GPU (or per ``--num-gpus`` on CPU).

    A rerun of a requeued job (SLURM_RESTART_COUNT > 0) always resumes, whoever requeued it: a
    fresh start would overwrite the checkpoints in OUTPUT_DIR. The rendezvous options go first
    because train_net.py's trailing config overrides take every token after them.
    """
    from detectron2.engine import launch

    from iuq_d2.engine.launch import build_argument_parser, main as train_main

    if int(env.get("SLURM_RESTART_COUNT") or 0) > 0:
        train_argv = _with_resume(train_argv)
    args = build_argument_parser().parse_args([*rendezvous(env, port).argv(), *train_argv])
    threads = threads_per_process(int(env.get("SLURM_CPUS_PER_TASK") or 0), args.num_gpus)
    if threads and "OMP_NUM_THREADS" not in env:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read by the processes launch() spawns
    launch(
        _worker,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(train_main, args),
    )


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

        The workers ignore Slurm's signals (see :func:`_worker`); left alone they would go on
        training and writing checkpoints until Slurm kills them, KillWait seconds later.
        """
        for worker in multiprocessing.active_children():
            worker.kill()
        resumed = SlurmTrainJob(_with_resume(self.train_argv), self.env, self.port)
        return submitit.helpers.DelayedSubmission(resumed)


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
    from iuq_d2.engine.launch import build_argument_parser

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
    it), because only a value set before Python starts reaches torch.
    """
    package_root = str(Path(__file__).resolve().parents[2])
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


if __name__ == "__main__":
    main()
