"""Tensor collectives that degrade to no-ops in a single process."""
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
