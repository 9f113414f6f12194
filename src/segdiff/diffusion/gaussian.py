"""The forward process and the training loss (paper eq. 5, 11, 18)."""

from __future__ import annotations

import torch

from ..config import PREDICTIONS
from .schedule import Schedule


def _at(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """Gather schedule values at integer t ([N] -> [N, 1, 1, 1], or a sampler's step as a Python int ->
    [1, 1, 1, 1], a view: no kernel) in like's dtype and device. Values already on like's device in its
    dtype (`Schedule.on`, as the samplers pass them) are not copied."""
    index = t.to(like.device) if isinstance(t, torch.Tensor) else t
    return values.to(like.device)[index].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (eq. 5). x0, eps: [N, M, H, W]; t: [N]."""
    ab = _at(sched.alpha_bar, t, x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps


def x0_from_eps(x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), eq. 5 solved for x0, with coefficients
    computed in float64 (x_t / sqrt(alpha_bar_t) - sqrt(1 / alpha_bar_t - 1) eps)."""
    return _at(sched.sqrt_recip_alpha_bar, t, x_t) * x_t - _at(sched.sqrt_recipm1_alpha_bar, t, x_t) * eps


def eps_from_x0(x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t), eq. 5 solved for eps, the inverse of
    `x0_from_eps` with its coefficients (an x0-predicting network's output as the samplers' eps; DDIM's eps
    of a clipped x0)."""
    return (_at(sched.sqrt_recip_alpha_bar, t, x_t) * x_t - x0) / _at(sched.sqrt_recipm1_alpha_bar, t, x_t)


def posterior_mean(x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, sched: Schedule) -> torch.Tensor:
    """mu-tilde_t(x_t, x0) (eq. 9)."""
    return _at(sched.coef_x0, t, x_t) * x0 + _at(sched.coef_xt, t, x_t) * x_t


def training_loss(
    model,
    x0: torch.Tensor,
    cond: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    sched: Schedule,
    prediction: str = "eps",
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss of a batch, a mean over pixels and batch.

    prediction "eps": the MSE between eps and eps_theta(x_t, I, t) (eq. 18). "x0": the network outputs x0
    and the loss is the MSE to x0 (the same x_t and t). "onepass": not diffusion, the baseline segmenter
    (`onepass_loss`); t and eps are ignored.

    The authors' per-image sum under fp16 loss scaling is the documented cause of their users' NaN and
    divergence reports; the mean keeps the gradient scale independent of the image size.
    valid [N, 1, H, W] (multi-class data with an ignore label): pixels where it is 0 add nothing; the mean
    still divides by every element, so the loss of a batch does not depend on how it is split over ranks.
    """
    if prediction == "onepass":
        if x0.shape[1] != 1:
            raise ValueError("prediction 'onepass' is for binary masks (one mask channel)")
        return onepass_loss(model, x0, cond)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
    x_t = q_sample(x0, t, eps, sched)
    pred = model(x_t, t, cond)
    target = x0 if prediction == "x0" else eps
    if valid is None:
        return torch.mean((pred.float() - target.float()) ** 2)
    return torch.mean((pred.float() - target.float()) ** 2 * valid.float())


def onepass_logits(model, cond: torch.Tensor, shape) -> torch.Tensor:
    """The one-pass segmenter: logits = net(x_t = 0, t = 0, G(I)); shape [N, 1, H, W]."""
    n = shape[0]
    x = torch.zeros(shape, device=cond.device, dtype=cond.dtype)
    return model(x, torch.zeros(n, dtype=torch.long, device=cond.device), cond)


def onepass_loss(model, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice (foreground, per image, averaged) of sigmoid(logits) against the mask (x0 + 1) / 2."""
    logits = onepass_logits(model, cond, x0.shape).float()
    target = (x0.float() + 1) / 2
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).flatten(1).sum(1)
    dice = (2 * inter + 1.0) / (p.flatten(1).sum(1) + target.flatten(1).sum(1) + 1.0)
    return bce + (1 - dice).mean()
