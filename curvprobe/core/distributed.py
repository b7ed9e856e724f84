"""Data parallelism over ``torch.distributed``: which samples a rank evaluates, and the reductions.

A data-parallel :class:`~curvprobe.core.problem.Problem` splits every sample
range into the same chunks a single process would use and gives chunk ``c``
to rank ``c mod W`` (``W`` ranks). Each rank sums its chunks' float64
contributions; :func:`all_reduce_sum` adds the ranks' partial sums. Per-sample
values (losses, subspace derivatives) are written into a zero tensor at their
sample positions and summed the same way, which puts every value in sample
order on every rank exactly (adding zeros is exact).

Every rank holds the full parameter vector and every solver vector, and runs
the same deterministic arithmetic on the same all-reduced results, so solvers
and Monte Carlo draws (seeded by ``(seed, stream, draw)``) stay identical on
all ranks without further communication.

Launch with ``torchrun --standalone --nproc-per-node W ...`` (gloo on CPU,
NCCL on CUDA); :func:`init_from_environment` starts the process group from
torchrun's environment with a bounded timeout, so a rank that dies makes the
others fail instead of hanging.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DEFAULT_TIMEOUT_S", "Shard", "all_reduce_sum", "barrier", "broadcast_object",
           "init_from_environment", "launched_by_torchrun", "shard", "world"]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800.0
"""Seconds a collective waits for the other ranks before failing (``CURVPROBE_DIST_TIMEOUT``)."""


@dataclass(frozen=True)
class Shard:
    """This process's place in the process group: ``rank`` of ``size`` ranks."""

    rank: int = 0
    size: int = 1

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes files and prints (rank 0)."""
        return self.rank == 0

    def owns(self, chunk_index: int) -> bool:
        """Whether chunk number ``chunk_index`` of a sample range is this rank's."""
        return chunk_index % self.size == self.rank


def world() -> Shard:
    """The default process group's rank and size (``Shard(0, 1)`` when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def shard(distributed: bool) -> Shard:
    """The shard of a Problem built with ``distributed``; a clear error if no group is running."""
    if not distributed:
        return Shard()
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("Problem(distributed=True) needs an initialised torch.distributed process "
                           "group: launch with torchrun and call "
                           "curvprobe.core.distributed.init_from_environment() (or "
                           "torch.distributed.init_process_group) first")
    return world()


def all_reduce_sum(x: Tensor, group: Shard) -> Tensor:
    """``Σ_ranks x`` on every rank, in place (``x`` should be float64); a no-op for one rank.
    A strided view (a column block of a reused buffer) is reduced through a
    contiguous copy: the backends take contiguous tensors only."""
    if group.size > 1:
        y = x if x.is_contiguous() else x.contiguous()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        if y is not x:
            x.copy_(y)
    return x


def broadcast_object(value: T, group: Shard) -> T:
    """Rank 0's ``value`` on every rank (a picklable object; the value itself for one rank)."""
    if group.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(group: Shard) -> None:
    """Wait for every rank (a no-op for one rank)."""
    if group.size > 1:
        dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether torchrun's environment (``RANK``, ``WORLD_SIZE``) names more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_environment(device: str | torch.device = "cpu", *, timeout_s: float | None = None) -> Shard:
    """Start the default process group from torchrun's environment, once.

    gloo for CPU devices, NCCL for CUDA (each rank on ``cuda:LOCAL_RANK``);
    collectives fail after ``timeout_s`` seconds (default
    ``CURVPROBE_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`) instead of waiting
    forever on a rank that died. Returns this process's :class:`Shard`.
    """
    if dist.is_initialized():
        return world()
    timeout = float(timeout_s if timeout_s is not None
                    else os.environ.get("CURVPROBE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo",
                            timeout=dt.timedelta(seconds=timeout))
    return world()
