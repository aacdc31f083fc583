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


class RowGather:
    """All-gather of tensors whose row counts differ per process (also zero), concatenated in
    rank order; identical results on every process.

    One collective per call in the steady state: every process sends one float64 buffer of
    ``capacity`` rows, its row count in front and every tensor packed side by side (float32
    values and int64 ids below 2**53 are exact). The counts arrive with the rows (one host
    sync to read them); when one exceeds the capacity, every process sees it in the same
    gathered counts, so all of them raise the capacity alike and gather again.
    """

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity

    def __call__(self, *tensors: Tensor) -> Tuple[List[Tensor], List[int]]:
        num_rows = tensors[0].shape[0]
        world_size = comm.get_world_size()
        if world_size == 1:
            return list(tensors), [num_rows]
        widths = [math.prod(t.shape[1:]) for t in tensors]
        rows = torch.cat(
            [t.reshape(num_rows, w).to(torch.float64) for t, w in zip(tensors, widths)], dim=1
        )
        while True:
            packed = rows.new_zeros(1 + self.capacity, rows.shape[1])
            packed[0, 0] = num_rows
            packed[1 : 1 + min(num_rows, self.capacity)] = rows[: self.capacity]
            buffers = [torch.empty_like(packed) for _ in range(world_size)]
            dist.all_gather(buffers, packed)
            counts = [int(c) for c in torch.stack([b[0, 0] for b in buffers]).tolist()]
            if max(counts) <= self.capacity:
                break
            self.capacity = 1 << (max(counts) - 1).bit_length()
        rows = torch.cat([b[1 : 1 + c] for b, c in zip(buffers, counts)])
        gathered = [
            part.to(t.dtype).reshape(-1, *t.shape[1:])
            for part, t in zip(torch.split(rows, widths, dim=1), tensors)
        ]
        return gathered, counts
