"""How many intra-op threads a training process runs on the CPU, for local and Slurm runs alike."""

import os
from typing import Optional

import torch
from detectron2.utils import comm


def threads_per_process(
    cpus: Optional[int], num_processes: int, num_workers: int = 0
) -> Optional[int]:
    """Each of ``num_processes`` training processes' equal share of ``cpus``, less the cores of
    its ``num_workers`` data-loader workers; at least 1. None when the CPU count is unknown.

    torch's default, one thread per core it sees in every process, oversubscribes the cores as
    soon as a second training process or loader workers run beside it, and OpenMP threads then
    spin-wait on each other: on a 2-core machine a demo step took 0.31 s with 1 thread and 0.4 to
    8 s with 2; on a busy one under Slurm training was 30 to 100 times slower.
    """
    if not cpus:
        return None
    return max(1, cpus // max(1, num_processes) - num_workers)


def set_cpu_threads(num_workers: int) -> None:
    """Apply :func:`threads_per_process` to this process, one of the machine's local processes.

    OMP_NUM_THREADS, when set, wins: a user chose it, or a Slurm job set it before Python started,
    from this same policy (:mod:`iuq_d2.engine.slurm`).
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads_per_process(cores, comm.get_local_size(), num_workers))
