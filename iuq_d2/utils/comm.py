"""Tensor collectives that degrade to no-ops in a single process."""

from typing import List, Tuple

import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch import Tensor


def reduce_mean(value: Tensor) -> Tensor:
    """Average a tensor over all processes (a copy; the input is left unchanged)."""
    value = value.detach().clone()
    world_size = comm.get_world_size()
    if world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world_size
    return value


def to_float_tensor(value: float, like: Tensor) -> Tensor:
    return torch.tensor(float(value), dtype=torch.float32, device=like.device)


def all_gather_rows(*tensors: Tensor) -> Tuple[List[Tensor], List[int]]:
    """Concatenate, in rank order, each tensor's rows from every process.

    Row counts may differ per process (also zero). Counts are exchanged first; every process
    then sends its rows padded to the largest count, so the payload collectives have one fixed
    size, and the padding is cut off using the counts. All processes get identical results.

    Returns:
        the gathered tensors and the row count each rank contributed.
    """
    num_rows = tensors[0].shape[0]
    world_size = comm.get_world_size()
    if world_size == 1:
        return list(tensors), [num_rows]
    count = torch.tensor([num_rows], dtype=torch.int64, device=tensors[0].device)
    counts_list = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts_list, count)
    counts = [int(c.item()) for c in counts_list]
    max_rows = max(counts)
    if max_rows == 0:
        return list(tensors), counts
    gathered = []
    for t in tensors:
        padded = t.new_zeros((max_rows, *t.shape[1:]))
        padded[:num_rows] = t
        buffers = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(buffers, padded)
        gathered.append(torch.cat([b[:c] for b, c in zip(buffers, counts)]))
    return gathered, counts
