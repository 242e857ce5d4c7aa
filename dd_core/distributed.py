"""PyTorch's launcher (torchrun) from the engine's side: which process this is, how many there
are, which backend and device each uses, and which share of N jobs is its own.

    torchrun --standalone --nproc_per_node 2 -m dd_core <command> ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is one process of one, and
nothing is initialised. gloo on CPUs, nccl on GPUs (one GPU per local rank).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Place:
    """This process in the launch: its rank among `world` processes and the device it computes on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend(cuda: bool) -> str:
    """nccl between GPUs, gloo between CPUs."""
    return "nccl" if cuda else "gloo"


def share(n: int, rank: int, world: int) -> list[int]:
    """Job indices 0..n-1 of `rank`: every world-th one from `rank` (N = 5 on 2 ranks: 0, 2, 4 and 1, 3),
    so jobs keep their index (their seed) whatever the number of processes."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    return list(range(rank, n, world))


@contextlib.contextmanager
def launched(cuda: bool | None = None):
    """The process group for the duration of a command, if torchrun started several processes;
    yields this process's Place. One process: no group, rank 0 of 1, the default device."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    world = world_size()
    if world <= 1:
        yield Place(0, 1, torch.device("cuda" if cuda else "cpu"))
        return
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend(cuda))
    try:
        yield Place(dist.get_rank(), dist.get_world_size(), device)
    finally:
        dist.destroy_process_group()


def gather_floats(values: list[float], place: Place) -> list[float]:
    """Every rank's `values`, concatenated in rank order, on every rank (one process: `values`)."""
    if place.world == 1:
        return list(values)
    out: list[list[float] | None] = [None] * place.world
    dist.all_gather_object(out, list(values))
    return [v for part in out for v in part]
