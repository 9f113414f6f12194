"""The forward process and the training loss (paper eq. 5, 11, 18)."""

from __future__ import annotations

import torch

from .schedule import Schedule


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather float64 schedule values at integer t -> [N, 1, 1, 1] in like's dtype and device."""
    return values.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (eq. 5). x0, eps: [N, 1, H, W]; t: [N]."""
    ab = _at(sched.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps


def predict_x0(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), eq. 5 solved for x0."""
    ab = _at(sched.alpha_bar, t, x_t)
    return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()


def eps_from_x0(x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, sched: Schedule) -> torch.Tensor:
    ab = _at(sched.alpha_bar, t, x_t)
    return (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt()


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """mu-tilde_t(x_t, x0) (eq. 9)."""
    return _at(sched.coef_x0, t, x_t) * x0 + _at(sched.coef_xt, t, x_t) * x_t


def training_loss(
    model, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, sched: Schedule
) -> torch.Tensor:
    """Mean squared error between eps and eps_theta(x_t, I, t) (eq. 18), a mean over pixels and batch.

    The authors' per-image sum under fp16 loss scaling is the documented cause of their users' NaN and
    divergence reports; the mean keeps the gradient scale independent of the image size.
    """
    x_t = q_sample(x0, t, eps, sched)
    pred = model(x_t, t, cond)
    return torch.mean((pred.float() - eps.float()) ** 2)
