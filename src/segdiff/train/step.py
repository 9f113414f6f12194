"""One training step (Algorithm 2's body): the loss as one module, backward, clipping, optimizer and EMA.
What `train` runs every step and what `segdiff benchmark` times as our training step."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .. import rng
from ..config import RunConfig
from ..data.transforms import normalize
from ..diffusion import Schedule, training_loss
from .ema import EMA


class LossModule(nn.Module):
    """Eq. 18 as one module, so that DistributedDataParallel (and torch.compile) see G, F, E and D in one
    forward: image [B, C, H, W] in [0, 1] -> normalised with the run's statistics -> G(I) -> the loss."""

    def __init__(self, net: nn.Module, schedule: Schedule, config: RunConfig):
        super().__init__()
        self.net = net
        self.schedule = schedule  # plain tensors, not module state
        self.config = config

    def forward(self, image, x0, t, eps, valid=None, self_cond=None, onepass_phase=False):
        """self_cond [N] bool: samples whose x0 input is first estimated (model.self_condition);
        onepass_phase: a step of staged training's one-pass phase (train.onepass_steps)."""
        data, m, tc = self.config.data, self.config.model, self.config.train
        cond = self.net.encode_image(normalize(image, data.mean, data.std))
        levers = {}
        if m.x0_output != "direct" or tc.mse_loss_weight != 1.0 or tc.seg_loss_weight:
            levers.update(x0_output=m.x0_output, mse_weight=tc.mse_loss_weight, seg_weight=tc.seg_loss_weight)
        if self_cond is not None or onepass_phase:
            levers.update(self_cond=self_cond, onepass_phase=onepass_phase)
        return training_loss(self.net, x0, cond, t, eps, self.schedule, m.prediction, valid, **levers)


def onepass_end(tc) -> float:
    """The first step after staged training's one-pass phase: onepass_steps, or onepass_fraction of
    max_steps (infinite while a budget run has not fixed max_steps yet: the probe steps are one-pass)."""
    if tc.onepass_fraction > 0:
        if tc.budget_minutes is not None and tc.budget_fixed_at is None:
            return float("inf")
        return round(tc.onepass_fraction * tc.max_steps)
    return tc.onepass_steps


def step_levers(config: RunConfig, step: int, start: int, stop: int) -> tuple:
    """The extra arguments of LossModule for `step` (empty when no lever is on, so the call is as before):
    the self-conditioning rows of this rank's slice start..stop of the global batch (keyed by seed and step,
    not drawn from the global RNG: a resumed run draws the same), and whether the step is in the one-pass phase."""
    tc = config.train
    phase = step < onepass_end(tc)
    rows = None
    if config.model.self_condition and not phase:
        g = rng.generator(tc.seed, "self_condition", step)
        rows = (torch.rand(tc.batch_size, generator=g, dtype=torch.float64) < tc.self_condition_prob)[start:stop]
    return () if rows is None and not phase else (rows, phase)


def _grad_norm(net: nn.Module, grad_clip: float) -> torch.Tensor:
    """The gradients' total norm (non-finite iff a gradient is), clipping them to grad_clip when set."""
    if grad_clip:
        return torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train_step(
    loss_fn, net: nn.Module, opt, ema: EMA, batch, step: int, grad_clip: float, amp, skip_nonfinite: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Algorithm 2: loss (under CUDA autocast to `amp` when given), backward, gradient
    clipping, optimizer step, EMA update. Also what `segdiff benchmark` times as our training step.

    Returns the loss and a flag (a 0-d bool tensor, on the loss's device, not synchronised) that is
    False when the loss or the gradients' norm is not finite. With skip_nonfinite such a step leaves the
    weights, optimizer and EMA as they were (this reads the flag on the host: one sync per step; under
    torchrun the ranks agree through an all-reduce)."""
    with torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext():
        loss = loss_fn(*batch)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    finite = torch.isfinite(loss.detach()) & torch.isfinite(_grad_norm(net, grad_clip))
    if skip_nonfinite:
        ok = finite.to(torch.int32)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
        if not bool(ok):
            opt.zero_grad(set_to_none=True)
            return loss, ok.bool()
    opt.step()
    ema.update(net, step)
    return loss, finite
