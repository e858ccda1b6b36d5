"""Process-group setup from torchrun's environment, and the few collectives training needs.

One code path for every scale: without ``WORLD_SIZE`` (or with 1) this is a
single process and every collective is the identity. Under ``torchrun``
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
it joins the process group: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["Dist", "setup_distributed"]


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_gather_object(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: float | torch.Tensor) -> torch.Tensor:
        """Sum over processes of a number or tensor (returned as a float64 tensor on ``device``)."""
        t = torch.as_tensor(value, dtype=torch.float64, device=self.device).clone()
        if self.active:
            dist.all_reduce(t)
        return t

    def sizes(self, n: int) -> list[int]:
        """Every process's local batch size."""
        if not self.active:
            return [n]
        t = torch.tensor([n], dtype=torch.int64, device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return [int(x) for x in out]

    def gather_rows(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Rows of every process, concatenated in rank order; only this process's rows carry gradient.

        Gradients therefore reach this process's parameters only through its own
        samples: a loss computed on the gathered rows must be multiplied by
        ``world`` before DDP averages gradients, to equal the one-process gradient.
        """
        if not self.active:
            return x
        longest = max(sizes)
        padded = x.detach()
        if x.shape[0] < longest:
            padded = torch.cat([padded, padded.new_zeros(longest - x.shape[0], *x.shape[1:])])
        out = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(out, padded.contiguous())
        parts = [t[:n] for t, n in zip(out, sizes)]
        parts[self.rank] = x
        return torch.cat(parts)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup_distributed(device: str = "auto") -> Dist:
    """Read torchrun's variables, pick the device, and join the process group when there are several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no GPU is visible")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(minutes=int(os.environ.get("AUDIOCLIP_DIST_TIMEOUT_MIN", "30"))),
        )
        owns = True
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev, owns_group=owns)
