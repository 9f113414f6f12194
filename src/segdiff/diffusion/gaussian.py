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
    *,
    x0_output: str = "direct",
    mse_weight: float = 1.0,
    seg_weight: float = 0.0,
    self_cond: torch.Tensor | None = None,
    onepass_phase: bool = False,
) -> torch.Tensor:
    """The training loss of a batch, a mean over pixels and batch.

    prediction "eps": the MSE between eps and eps_theta(x_t, I, t) (eq. 18). "x0": the network outputs x0
    and the loss is the MSE to x0 (the same x_t and t). "onepass": not diffusion, the baseline segmenter
    (`onepass_loss`); t and eps are ignored.

    The authors' per-image sum under fp16 loss scaling is the documented cause of their users' NaN and
    divergence reports; the mean keeps the gradient scale independent of the image size.
    valid [N, 1, H, W] (multi-class data with an ignore label): pixels where it is 0 add nothing; the mean
    still divides by every element, so the loss of a batch does not depend on how it is split over ranks.

    Issue 20's levers (their defaults give the loss above, bitwise): x0_output "logits" (x0 = `x0_from_output`
    of the network's logits) with mse_weight x MSE(x0) + seg_weight x `seg_loss` on the logits; self_cond
    [N] bool: the samples whose x0 input (a self-conditioned network's) is first estimated by a no-grad pass
    (the others get zeros); onepass_phase: x_t = 0 at t = T - 1 (staged training's one-pass phase).
    """
    if prediction == "onepass":
        return onepass_loss(model, x0, cond, valid)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r}: choose one of {', '.join(PREDICTIONS)}")
    if onepass_phase:  # the x0 model as a one-pass segmenter: what the first sampling step sees, without noise
        x_t, t = torch.zeros_like(x0), torch.full_like(t, len(sched) - 1)
    else:
        x_t = q_sample(x0, t, eps, sched)
    if self_cond is not None and not onepass_phase and bool(self_cond.any()):
        pred = model(x_t, t, cond, _self_estimate(model, x_t, t, cond, sched, prediction, x0_output, self_cond))
    else:
        pred = model(x_t, t, cond)
    if x0_output == "logits":
        return _x0_logits_loss(pred.float(), x0, valid, mse_weight, seg_weight)
    target = x0 if prediction == "x0" else eps
    if valid is None:
        loss = torch.mean((pred.float() - target.float()) ** 2)
    else:
        loss = torch.mean((pred.float() - target.float()) ** 2 * valid.float())
    return loss if mse_weight == 1.0 else mse_weight * loss


def x0_from_output(y: torch.Tensor, x0_output: str) -> torch.Tensor:
    """An x0 network's output -> x0: itself ("direct"), or from logits ("logits"): 2 sigmoid(z) - 1 for one
    mask channel, 2 softmax(z) - 1 over K class channels (the one-hot x0 of the K-class masks lies in
    {-1, 1}, so a class distribution maps onto it)."""
    if x0_output == "direct":
        return y
    if x0_output != "logits":
        raise ValueError(f"x0_output {x0_output!r}: choose direct or logits")
    return 2 * torch.sigmoid(y) - 1 if y.shape[1] == 1 else 2 * torch.softmax(y, dim=1) - 1


def _self_estimate(model, x_t, t, cond, sched, prediction, x0_output, rows_mask) -> torch.Tensor:
    """Self-conditioning's first pass (no gradient) for the chosen rows: their x0 estimate in [-1, 1],
    zeros for the others (Chen et al. 2022: half of the samples train without an estimate)."""
    rows = rows_mask.nonzero().squeeze(1)
    with torch.no_grad():
        y = model(x_t[rows], t[rows], cond.detach()[rows] if cond.shape[0] == x_t.shape[0] else cond.detach()).float()
        est = x0_from_output(y, x0_output) if prediction == "x0" else x0_from_eps(x_t[rows], t[rows], y, sched)
    out = torch.zeros_like(x_t)
    out[rows] = est.clamp(-1.0, 1.0).to(out.dtype)
    return out


def _x0_logits_loss(logits, x0, valid, mse_weight: float, seg_weight: float) -> torch.Tensor:
    loss = logits.new_zeros(())
    if mse_weight:
        sq = (x0_from_output(logits, "logits") - x0.float()) ** 2
        loss = loss + mse_weight * torch.mean(sq if valid is None else sq * valid.float())
    if seg_weight:
        loss = loss + seg_weight * seg_loss(logits, x0, valid)
    return loss


def seg_loss(logits: torch.Tensor, x0: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The segmentation loss on logits against the mask in x0 space: binary (one channel): BCE + soft Dice
    of the foreground (per image, averaged), as the one-pass baseline; K channels: cross-entropy over the
    classes + soft Dice per class (per image, averaged over classes present or predicted), ignored pixels
    (valid = 0) excluded from both."""
    target = (x0.float() + 1) / 2
    if logits.shape[1] == 1:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        p = torch.sigmoid(logits)
        inter = (p * target).flatten(1).sum(1)
        dice = (2 * inter + 1.0) / (p.flatten(1).sum(1) + target.flatten(1).sum(1) + 1.0)
        return bce + (1 - dice).mean()
    v = torch.ones_like(logits[:, :1]) if valid is None else valid.float()
    ce = -(target * torch.log_softmax(logits, dim=1)).sum(1, keepdim=True)
    ce = (ce * v).sum() / v.sum().clamp(min=1.0)
    p = torch.softmax(logits, dim=1) * v
    t = target * v
    inter = (p * t).flatten(2).sum(2)
    dice = (2 * inter + 1.0) / (p.flatten(2).sum(2) + t.flatten(2).sum(2) + 1.0)
    return ce + (1 - dice).mean()


def onepass_logits(model, cond: torch.Tensor, shape) -> torch.Tensor:
    """The one-pass segmenter: logits = net(x_t = 0, t = 0, G(I)); shape [N, M, H, W]."""
    n = shape[0]
    x = torch.zeros(shape, device=cond.device, dtype=cond.dtype)
    return model(x, torch.zeros(n, dtype=torch.long, device=cond.device), cond)


def onepass_loss(model, x0: torch.Tensor, cond: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """`seg_loss` of the one-pass logits: BCE + soft Dice (foreground, per image, averaged) of sigmoid(logits)
    against the mask (x0 + 1) / 2; K classes: cross-entropy + soft Dice per class (issue 20's baseline)."""
    return seg_loss(onepass_logits(model, cond, x0.shape).float(), x0, valid)
