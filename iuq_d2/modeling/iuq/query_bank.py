"""The query bank: a first-in-first-out memory of instance pixels from past training images,
the negatives of the inter-scene uniqueness loss."""

from dataclasses import dataclass, fields
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn


@dataclass
class BankEntries:
    """Instance pixels, one row each. Features and geometry are constants (no gradient)."""

    feats: Tensor  # [N, C] mask feature F at the pixel's stride-8 cell
    positions: Tensor  # [N, 2] (x, y) of the cell centre in its image, input pixels
    offsets: Tensor  # [N, 2] from the pixel to its instance's box centre, input pixels
    image_ids: Tensor  # [N] int64 id of the source image

    def __len__(self) -> int:
        return self.feats.shape[0]

    def as_tuple(self) -> Tuple[Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def __getitem__(self, index) -> "BankEntries":
        return BankEntries(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def cat(parts: List["BankEntries"]) -> "BankEntries":
        return BankEntries(
            *(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(BankEntries))
        )


class QueryBank(nn.Module):
    """Ring buffer of :class:`BankEntries` kept in registered buffers.

    The buffers travel with the model's state_dict, so checkpoints save the bank and
    ``--resume`` restores it. Every process enqueues the same all-gathered entries at the same
    pointer, so the bank is identical on all processes without ever being broadcast. Writing
    starts at slot 0 and never empties a slot, so the filled slots are always the first
    ``num_filled``: the host keeps that count, and a step reads nothing back from the device.
    """

    def __init__(self, capacity: int, feat_dim: int):
        super().__init__()
        if capacity <= 0:
            raise ValueError(f"MODEL.IUQ.INTER.BANK_SIZE must be positive, got {capacity}")
        self.capacity = capacity
        self.register_buffer("feats", torch.zeros(capacity, feat_dim))
        self.register_buffer("positions", torch.zeros(capacity, 2))
        self.register_buffer("offsets", torch.zeros(capacity, 2))
        self.register_buffer("image_ids", torch.full((capacity,), -1, dtype=torch.int64))
        self.register_buffer("valid", torch.zeros(capacity, dtype=torch.bool))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self._num_filled: Optional[int] = 0  # None: read from ``valid`` at the next use

    @property
    def num_filled(self) -> int:
        if self._num_filled is None:
            self._num_filled = int(self.valid.sum())
        return self._num_filled

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._num_filled = None

    @torch.no_grad()
    def enqueue(self, entries: BankEntries) -> None:
        """Write entries at the pointer, wrapping around; with more entries than capacity only
        the last ``capacity`` are kept."""
        n = len(entries)
        if n == 0:
            return
        if n > self.capacity:
            entries = entries[n - self.capacity :]
            n = self.capacity
        slots = (self.ptr + torch.arange(n, device=self.ptr.device)) % self.capacity
        for f in fields(BankEntries):
            buffer = getattr(self, f.name)
            buffer[slots] = getattr(entries, f.name).to(buffer.dtype)
        self.valid[slots] = True
        self.ptr.copy_((self.ptr + n) % self.capacity)
        self._num_filled = min(self.capacity, self.num_filled + n)

    @torch.no_grad()
    def sample(self, num: int, generator: Optional[torch.Generator] = None) -> BankEntries:
        """Up to ``num`` distinct filled entries, uniformly at random (drawn on the bank's
        device: no host sync)."""
        count, device = self.num_filled, self.valid.device
        if count > num:
            filled = torch.randperm(count, generator=generator, device=device)[:num]
        else:
            filled = torch.arange(count, device=device)
        return BankEntries(*(getattr(self, f.name)[filled] for f in fields(BankEntries)))
