"""The one place a network of a run's architecture is built (prediction, training, the memory estimate and
the benchmarks all call `build_network`)."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..devices import default_device
from .unet import SegDiffUNet


def build_network(config: RunConfig, device: torch.device | str | None = None) -> SegDiffUNet:
    """A SegDiffUNet of the run's architecture (fresh weights) on `device` (default: the GPU when there is
    one); "meta" builds the structure only, without allocating its weights (parameter counts, layouts)."""
    device = default_device(device)
    if device.type == "meta":
        with torch.device("meta"):
            return SegDiffUNet(config.model, config.diffusion.steps)
    return SegDiffUNet(config.model, config.diffusion.steps).to(device)
