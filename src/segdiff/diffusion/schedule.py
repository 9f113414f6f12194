"""Noise schedules (paper eq. 3, 10, 14) in float64, and respacing to a subset of K timesteps.

Index convention: arrays are indexed 0..T-1 for the paper's t = 1..T, and the network is given the
index (as in improved-diffusion).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from ..config import SCHEDULES, T_SAMPLINGS


def linear_betas(T: int, kind: str = "scaled") -> np.ndarray:
    """Linear betas of length T.

    "paper": eq. 14, beta from 1e-4 to 2e-2 whatever T is.  At T = 100, alpha_bar_T ~ 0.36, so x_T still
        carries sqrt(alpha_bar_T) ~ 0.60 of the mask while sampling starts from pure noise.
    "scaled": the authors' code (improved-diffusion's get_named_beta_schedule("linear")), the same line
        scaled by 1000 / T: 1e-3 to 0.2 at T = 100, sqrt(alpha_bar_T) ~ 0.0045. Betas are capped at 0.999
        (this only matters below T = 50, e.g. in small test models).
    """
    if T < 1:
        raise ValueError(f"diffusion steps must be >= 1, got {T}")
    if kind == "paper":
        lo, hi = 1e-4, 2e-2
    elif kind == "scaled":
        scale = 1000.0 / T
        lo, hi = scale * 1e-4, scale * 2e-2
    else:
        raise ValueError(f"schedule {kind!r}: choose one of {', '.join(SCHEDULES)}")
    betas = np.array([hi], dtype=np.float64) if T == 1 else np.linspace(lo, hi, T, dtype=np.float64)
    # below T = 50 the scaled line passes 1 (alpha_t <= 0); cap it as improved-diffusion caps its cosine betas
    return np.minimum(betas, 0.999)


@dataclass
class Schedule:
    """Precomputed float64 schedule tensors for a (possibly respaced) chain of K steps.

    `timesteps[i]` is the original timestep index (0..T-1) that step i of this chain corresponds to;
    for the full chain it is arange(T).
    """

    betas: torch.Tensor  # [K]
    timesteps: torch.Tensor  # [K] int64
    # [K] 1 - betas, given where 1 - beta would round: a respaced step over nearly all the signal has
    # beta = 1 - 1e-17 = 1.0 in float64, alpha = 0 and alpha_bar = 0 (inf in x0 = x_t / sqrt(alpha_bar))
    alphas: torch.Tensor | None = None

    def __post_init__(self):
        b = self.betas.double()
        self.alphas = 1.0 - b if self.alphas is None else self.alphas.double()
        self.alpha_bar = torch.cumprod(self.alphas, 0)
        self.alpha_bar_prev = torch.cat([b.new_ones(1), self.alpha_bar[:-1]])
        # beta-tilde_t (eq. 10); its first entry is 0
        self.posterior_variance = b * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)
        # mu-tilde (eq. 9) = coef_x0 * x0 + coef_xt * x_t
        self.coef_x0 = b * self.alpha_bar_prev.sqrt() / (1.0 - self.alpha_bar)
        self.coef_xt = (1.0 - self.alpha_bar_prev) * self.alphas.sqrt() / (1.0 - self.alpha_bar)
        # eq. 5 solved for x0 (x0 = sqrt_recip_alpha_bar x_t - sqrt_recipm1_alpha_bar eps), in float64:
        # 1 - alpha_bar near t = 0 loses most of its digits when alpha_bar is rounded to float32 first
        self.sqrt_recip_alpha_bar = self.alpha_bar.rsqrt()
        self.sqrt_recipm1_alpha_bar = (1.0 / self.alpha_bar - 1.0).sqrt()

    def __len__(self) -> int:
        return len(self.betas)

    def on(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Schedule:
        """This schedule with every float tensor computed in float64 and then cast to `dtype` on `device`:
        what a sampling loop indexes at each step, transferred once before it (no host copy per step)."""
        out = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                setattr(out, name, value.to(device=device, dtype=dtype))
        return out

    def variance(self, kind: str) -> torch.Tensor:
        """Reverse-process variance sigma_t^2: "small" = beta-tilde_t (eq. 13); "large" = beta_t.

        "large" uses beta-tilde at the first step, as improved-diffusion does (the noise added at the
        last step is not used by the x0 it returns anyway).
        """
        if kind == "small":
            return self.posterior_variance
        if kind == "large":
            if len(self) == 1:
                return self.betas.double()
            return torch.cat([self.posterior_variance[1:2], self.betas.double()[1:]])
        raise ValueError(f"variance must be 'large' or 'small', got {kind!r}")

    def respace(self, K: int) -> Schedule:
        """The DDPM chain on K evenly spaced timesteps of this one (improved-diffusion's respacing).

        betas are recomputed so that the subset's alpha_bar equals the original's at the kept steps:
        alpha'_i = alpha_bar[s_i] / alpha_bar[s_{i-1}], beta'_i = 1 - alpha'_i. K = T returns the chain unchanged.
        """
        T = len(self)
        if not 1 <= K <= T:
            raise ValueError(f"steps must be between 1 and T={T}, got {K}")
        if K == T:
            return self
        keep = np.round(np.linspace(0, T - 1, K)).astype(np.int64) if K > 1 else np.array([T - 1])
        ab = self.alpha_bar[torch.from_numpy(keep)]
        alphas = ab / torch.cat([ab.new_ones(1), ab[:-1]])
        # no cap: the chain's alpha_bar (a cumprod of these alphas) must equal the original's at the kept
        # steps. A cap at 0.999 bound for K <= 3 at T = 100 (alpha_bar_T 2.0e-5 became 1.0e-3), which shrank
        # an eps model's x0 estimate to 0.14x; improved-diffusion and diffusers do not clamp here either.
        # The alphas are passed as they are: 1 - beta' rounds to 0 when a step spans alpha_bar ~ 1e-17 (the
        # capped betas of T = 10), which would make the chain's alpha_bar 0.
        return Schedule(1.0 - alphas, self.timesteps[torch.from_numpy(keep)], alphas)


def make_schedule(T: int = 100, kind: str = "scaled") -> Schedule:
    return Schedule(torch.from_numpy(linear_betas(T, kind)), torch.arange(T))


def sample_timestep(T: int, kind: str, generator: torch.Generator | None, p_last: float = 0.0) -> int:
    """One training timestep index in 0..T-1.

    "uniform": Algorithm 2's t ~ U{0..T-1}. "high_noise": t = floor(T * sqrt(u)), u ~ U[0, 1), so
    P(t) = ((t + 1)^2 - t^2) / T^2 = (2t + 1) / T^2: weight growing linearly with t, mean about 2T/3;
    the noisiest step is drawn 2T - 1 times as often as the cleanest (the steps that decide the mask from
    little signal are the ones a short run must learn first).
    p_last > 0: with that probability t = T - 1 (one more draw from the generator first; none when 0).
    """
    if p_last > 0 and float(torch.rand((), generator=generator, dtype=torch.float64)) < p_last:
        return T - 1
    if kind == "uniform":
        return int(torch.randint(T, (), generator=generator))
    if kind == "high_noise":
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        return min(T - 1, int(T * u**0.5))
    raise ValueError(f"t_sampling {kind!r}: choose one of {', '.join(T_SAMPLINGS)}")


def timestep_probabilities(T: int, kind: str, p_last: float = 0.0) -> np.ndarray:
    """P(t) of `sample_timestep`, t = 0..T-1 (documentation and tests)."""
    if p_last > 0:
        p = (1 - p_last) * timestep_probabilities(T, kind)
        p[-1] += p_last
        return p
    if kind == "uniform":
        return np.full(T, 1.0 / T)
    if kind == "high_noise":
        t = np.arange(T, dtype=np.float64)
        return (2 * t + 1) / T**2
    raise ValueError(f"t_sampling {kind!r}: choose one of {', '.join(T_SAMPLINGS)}")
