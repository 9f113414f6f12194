"""Exponential moving average of the weights with a warm-up.

decay_n = min(rate, (1 + n) / (10 + n)) at update n: without the warm-up, a rate of 0.9999 leaves the
average after a few thousand steps mostly the random initialisation.
"""

from __future__ import annotations

import copy

import torch


def ema_decay(rate: float, n: int) -> float:
    return min(rate, (1 + n) / (10 + n))


class EMA:
    def __init__(self, model: torch.nn.Module, rate: float):
        self.rate = rate
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, n: int) -> None:
        """One update after optimizer step n (0-based): ema = decay * ema + (1 - decay) * weights."""
        d = ema_decay(self.rate, n)
        ema_p = [p for p in self.model.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
