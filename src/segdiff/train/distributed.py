"""torchrun support: process group setup from the environment torchrun provides.

Plain `segdiff train` (or torchrun with one process) runs with world size 1 and no process group.
Under `torchrun --nproc_per_node N` every process reads RANK, WORLD_SIZE and LOCAL_RANK, joins one
process group (NCCL on GPUs, gloo on the CPU) and trains its share of every global batch with
DistributedDataParallel; see docs/distributed.md.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

_GENERATION = itertools.count()  # process groups created by init_distributed in this process


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_distributed created the process group: shutdown() destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_type: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or use one the caller created.

    device_type "cpu" forces gloo even where CUDA is available; otherwise NCCL is used when CUDA is.
    """
    if dist.is_available() and dist.is_initialized():  # created by the caller (e.g. mp.spawn)
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank, world, int(os.environ.get("LOCAL_RANK", rank)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_type != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    # torchrun's store outlives the group, and a default group created again after destroy_process_group
    # reuses its key names and can read the stale addresses of the last one (a hang seen with gloo): each
    # group made here gets keys of its own, so that train() may run again, or a caller may init after it
    store, rank, world = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"segdiff-{next(_GENERATION)}", store)
    dist.init_process_group("nccl" if use_cuda else "gloo", store=store, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, owns_group=True)


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """True on every rank when it is true on any: ranks must agree to stop (e.g. --max-minutes)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if init_distributed created it (after a last barrier)."""
    if info.owns_group and dist.is_initialized():
        barrier(info)
        dist.destroy_process_group()
