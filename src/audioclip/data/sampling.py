"""Batch samplers that make every process count and a single process agree.

Training draws one permutation per epoch from ``(seed, epoch)`` and cuts it
into global batches; process ``r`` of ``W`` takes the ``r``-th slice of each.
Gathering the slices of all processes in rank order gives exactly the batch a
single process would see, so a DDP run and a one-process run of the same
global batch size see the same samples in the same order.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

from .augment import sample_generator

__all__ = ["EvalBatchSampler", "GlobalBatchSampler"]

_ORDER_STREAM = 0xFFFFFFFF  # an "index" no sample has: keeps the order apart from the samples' streams


class GlobalBatchSampler(Sampler):
    """Yields this process's part of each global batch as a list of ``(epoch, index)`` keys."""

    def __init__(
        self,
        size: int,
        global_batch: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if global_batch % world:
            raise ValueError(f"the batch size ({global_batch}) must be divisible by the number of processes ({world})")
        if drop_last and size < global_batch:
            raise ValueError(
                f"only {size} training clips for a batch size of {global_batch}: lower train.batch_size"
            )
        self.size, self.global_batch = size, global_batch
        self.rank, self.world = rank, world
        self.local = global_batch // world
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self.global_batch
        return -(-self.size // self.global_batch)

    def __iter__(self):
        if self.shuffle:
            g = sample_generator(self.seed, self.epoch, _ORDER_STREAM)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        for b in range(len(self)):
            chunk = order[b * self.global_batch : (b + 1) * self.global_batch]
            start = self.rank * len(chunk) // self.world
            stop = (self.rank + 1) * len(chunk) // self.world
            yield [(self.epoch, i) for i in chunk[start:stop]]


class EvalBatchSampler(Sampler):
    """Every ``world``-th clip from ``rank``, in batches, no shuffling."""

    def __init__(self, size: int, batch_size: int, rank: int = 0, world: int = 1):
        self.indices = list(range(rank, size, world))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for b in range(len(self)):
            yield [(0, i) for i in self.indices[b * self.batch_size : (b + 1) * self.batch_size]]
