"""Where a node stands in a Slurm job, derived from the job's environment alone.

detectron2's ``launch()`` must be told ``--num-machines``, ``--machine-rank`` and ``--dist-url`` on
every node. Inside a Slurm job all three follow from SLURM_* variables; :func:`rendezvous` derives
them as a pure function of that environment, so it is tested without Slurm and needs no
``scontrol`` on the node.
"""

import itertools
import re
from dataclasses import dataclass
from typing import List, Mapping, Optional

# Rendezvous ports are PORT_BASE + job id % PORT_SPAN: below Linux's ephemeral range (32768+), so
# an outgoing connection on the first node cannot already hold the port.
PORT_BASE = 20000
PORT_SPAN = 10000


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
