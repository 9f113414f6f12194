"""The device to run on, and waiting for it: the one place that chooses a default device and that
synchronises before a clock is read (CUDA work is asynchronous; elsewhere there is nothing to wait for)."""

from __future__ import annotations

import os

import torch


def default_device(device: torch.device | str | None = None, local_rank: int | None = None) -> torch.device:
    """`device` as a torch.device; None: the GPU when CUDA is available, else the CPU.

    Under torchrun (or with `local_rank` given) None and a plain "cuda" mean this process's GPU,
    cuda:LOCAL_RANK, so that each rank of a job uses its own card."""
    if local_rank is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and local_rank is not None:
        return torch.device("cuda", local_rank)
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on `device` is done (CUDA); a no-op on the CPU. Timers call this before
    reading the clock, so that a time covers the work and not only its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
