"""The device to run on, and waiting for it: the one place that chooses a default device and that
synchronises before a clock is read (CUDA work is asynchronous; elsewhere there is nothing to wait for)."""

from __future__ import annotations

import torch


def default_device(device: torch.device | str | None = None) -> torch.device:
    """`device` as a torch.device; None: the GPU when CUDA is available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on `device` is done (CUDA); a no-op on the CPU. Timers call this before
    reading the clock, so that a time covers the work and not only its launch."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
