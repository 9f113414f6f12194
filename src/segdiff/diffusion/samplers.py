"""Samplers with one signature: (eps_fn, x_T, schedule, noise, ...) -> x0.

`eps_fn(x_t, t)` is the conditioned noise predictor with the image already bound (G(I) computed once);
`t` holds the ORIGINAL timestep indices, also on respaced chains. `schedule` is the (respaced) chain to
walk. `noise.randn(shape, device)` draws the per-step noise (see segdiff.rng.GenerationNoise).
All schedule values are precomputed as device tensors before the loop: no host synchronisation per step.
The maths the samplers share (x0 from eps, eps from x0, the posterior mean of eq. 9) is gaussian.py's,
the functions tests/test_diffusion.py checks against the paper's equations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import SAMPLERS, chain_length
from .gaussian import eps_from_x0, posterior_mean, x0_from_eps
from .schedule import Schedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _dev(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return values.to(device=x.device, dtype=torch.float32)


def _x0(x: torch.Tensor, i: int, eps: torch.Tensor, chain: Schedule, clip: bool) -> torch.Tensor:
    """x0 of step i of the chain (eq. 5 solved for x0, gaussian.x0_from_eps), clipped to [-1, 1] or not."""
    x0 = x0_from_eps(x, i, eps, chain)
    return x0.clamp(-1.0, 1.0) if clip else x0


def ddpm(
    eps_fn: EpsFn, x_T: torch.Tensor, sched: Schedule, noise, variance: str = "large", clip_x0: bool = True
) -> torch.Tensor:
    """Ancestral sampling, Algorithm 1 (eq. 16), on the given chain; sigma_t^2 = beta_t ("large") or
    beta-tilde_t ("small", eq. 13). Written through x0 and mu-tilde (eq. 9), which equals eq. 16 when
    clip_x0 is False; with clipping (the authors' code) x0 is kept in [-1, 1] at every step.
    On a respaced chain this is improved-diffusion's respaced DDPM.
    """
    chain = sched.on(x_T.device)  # the coefficients as float32 device tensors, once: no host copy per step
    sigma = _dev(sched.variance(variance).sqrt(), x_T)
    ts = sched.timesteps.to(x_T.device)
    x, n = x_T, x_T.shape[0]
    for i in reversed(range(len(sched))):
        eps = eps_fn(x, ts[i].expand(n)).float()
        x = posterior_mean(_x0(x, i, eps, chain, clip_x0), x, i, chain)
        if i > 0:  # Algorithm 1: no noise at the last step
            x = x + sigma[i] * noise.randn(x.shape[1:], x.device)
    return x


def ddim(
    eps_fn: EpsFn, x_T: torch.Tensor, sched: Schedule, noise, eta: float = 0.0, clip_x0: bool = True
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) with stochasticity eta; eta = 0 is deterministic given x_T."""
    chain = sched.on(x_T.device)
    ab, abp = sched.alpha_bar, sched.alpha_bar_prev
    sigma64 = eta * ((1 - abp) / (1 - ab) * (1 - ab / abp)).clamp(min=0).sqrt()
    sigma = _dev(sigma64, x_T)
    c_x0 = _dev(abp.sqrt(), x_T)
    c_eps = _dev((1 - abp - sigma64**2).clamp(min=0).sqrt(), x_T)
    ts = sched.timesteps.to(x_T.device)
    x, n = x_T, x_T.shape[0]
    for i in reversed(range(len(sched))):
        eps = eps_fn(x, ts[i].expand(n)).float()
        x0 = _x0(x, i, eps, chain, clip_x0)
        if clip_x0:  # keep eps consistent with the clipped x0
            eps = eps_from_x0(x, i, x0, chain)
        x = c_x0[i] * x0 + c_eps[i] * eps
        if eta > 0 and i > 0:
            x = x + sigma[i] * noise.randn(x.shape[1:], x.device)
    return x


def dpm_solver_pp(eps_fn: EpsFn, x_T: torch.Tensor, sched: Schedule, noise, clip_x0: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), deterministic, on the chain's timesteps, ending with x0.

    lambda_t = log(sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t)); multistep second order with data prediction.
    """
    chain = sched.on(x_T.device)
    ab = sched.alpha_bar
    lam = 0.5 * (ab.log() - (1 - ab).log())
    alpha, sig = ab.sqrt(), (1 - ab).sqrt()
    ts = sched.timesteps.to(x_T.device)
    x, n = x_T, x_T.shape[0]
    x0_prev, h_prev = None, None
    for i in reversed(range(len(sched))):
        eps = eps_fn(x, ts[i].expand(n)).float()
        x0 = _x0(x, i, eps, chain, clip_x0)
        if i == 0:
            return x0
        h = float(lam[i - 1] - lam[i])
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (
            float(sig[i - 1] / sig[i]) * x
            - float(alpha[i - 1] * torch.expm1(torch.tensor(-h, dtype=torch.float64))) * d
        )
        x0_prev, h_prev = x0, h
    return x


def sample(
    name: str,
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    sched: Schedule,
    noise,
    sampling_steps: int | None = None,
    variance: str = "large",
    eta: float = 0.0,
    clip_x0: bool = True,
) -> torch.Tensor:
    """Run sampler `name` on `sampling_steps` evenly respaced timesteps of `sched` (None = all T)."""
    chain = sched.respace(chain_length(sampling_steps, len(sched)))
    if name == "ddpm":
        return ddpm(eps_fn, x_T, chain, noise, variance, clip_x0)
    if name == "ddim":
        return ddim(eps_fn, x_T, chain, noise, eta, clip_x0)
    if name == "dpm++":
        return dpm_solver_pp(eps_fn, x_T, chain, noise, clip_x0)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
