"""Tensor collectives that degrade to no-ops in a single process."""

import math
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

    Row counts may differ per process (also zero). Two collectives, whatever the number of
    tensors: the counts (one host sync), then every tensor packed side by side into one float64
    buffer padded to the largest count, which holds float32 values and int64 ids below 2**53
    exactly. All processes get identical results.

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
    counts = torch.cat(counts_list).tolist()
    max_rows = max(counts)
    if max_rows == 0:
        return list(tensors), counts
    widths = [math.prod(t.shape[1:]) for t in tensors]
    columns = [t.reshape(num_rows, w) for t, w in zip(tensors, widths)]
    packed = torch.zeros(max_rows, sum(widths), dtype=torch.float64, device=count.device)
    if num_rows:
        packed[:num_rows] = torch.cat([c.to(torch.float64) for c in columns], dim=1)
    buffers = [torch.empty_like(packed) for _ in range(world_size)]
    dist.all_gather(buffers, packed)
    rows = torch.cat([b[:c] for b, c in zip(buffers, counts)])
    gathered = [
        part.to(t.dtype).reshape(-1, *t.shape[1:])
        for part, t in zip(torch.split(rows, widths, dim=1), tensors)
    ]
    return gathered, counts
