"""Our schedule and samplers against an independent implementation: diffusers' schedulers (test extra).

Whole chains are compared, step by step the same maths: diffusers computes its coefficients in float32,
ours in float64 then float32, so results agree to ~1e-5, up to 5e-5 where diffusers' float32
1 - alpha_bar cancels near t = 0 (tolerance 1e-4 on samples in about [-3, 3]).
The per-step noise is the same stream: one generator, one draw of [1, 1, H, W] per step in both.
"""

from __future__ import annotations

import math

import pytest
import torch

from segdiff.diffusion import make_schedule
from segdiff.diffusion.samplers import ddim, ddpm, dpm_solver_pp
from segdiff.diffusion.schedule import Schedule
from segdiff.rng import GenerationNoise, generator

diffusers = pytest.importorskip("diffusers")

T = 100
KW = dict(num_train_timesteps=T, beta_start=1e-3, beta_end=0.2, beta_schedule="linear")
H = W = 8
ATOL = 1e-4

SCHED = make_schedule(T)
yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
TARGET = (0.9 * torch.sin(xx * 0.8) * torch.cos(yy * 0.5)).float().view(1, 1, H, W)


def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed 'network': the exact eps of TARGET plus a smooth x-dependent error, so that x0 is
    sometimes inside [-1, 1] and sometimes clipped."""
    ab = SCHED.alpha_bar[t.long()].float().view(-1, 1, 1, 1)
    return (x - ab.sqrt() * TARGET) / (1 - ab).sqrt() + 0.3 * torch.tanh(2 * x) * (t.float().view(-1, 1, 1, 1) / T)


def _noise(name: str) -> tuple[GenerationNoise, torch.Tensor, torch.Generator]:
    """Our noise for one generation, its x_T, and a generator at the same position for diffusers."""
    noise = GenerationNoise([generator(0, name)])
    x_T = noise.randn((1, H, W), "cpu")
    g = generator(0, name)
    assert torch.equal(torch.randn((1, 1, H, W), generator=g), x_T)
    return noise, x_T, g


def chain_at(timesteps: list[int]) -> Schedule:
    """Our DDPM chain on the given (ascending) original timesteps, as respacing builds it."""
    keep = torch.tensor(sorted(timesteps))
    ab = SCHED.alpha_bar[keep]
    prev = torch.cat([ab.new_ones(1), ab[:-1]])
    return Schedule(1.0 - ab / prev, keep)


def test_betas_and_alpha_bar_match_diffusers():
    d = diffusers.DDPMScheduler(**KW)
    torch.testing.assert_close(d.betas.double(), SCHED.betas, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(d.alphas_cumprod.double(), SCHED.alpha_bar, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("K", [T, 10])
@pytest.mark.parametrize("variance,variance_type", [("small", "fixed_small"), ("large", "fixed_large")])
def test_ddpm_chain_matches_diffusers(variance, variance_type, K):
    chain = SCHED.respace(K)
    d = diffusers.DDPMScheduler(**KW, variance_type=variance_type, clip_sample=True)
    if K == T:
        d.set_timesteps(T)
    else:  # our respaced chain, as diffusers' custom timesteps (descending)
        d.set_timesteps(timesteps=chain.timesteps.flip(0).tolist())
    assert d.timesteps.flip(0).tolist() == chain.timesteps.tolist()
    # the reverse-process variance of every step that adds noise (i > 0)
    ours_var = chain.variance(variance).float()
    theirs_var = [
        d._get_variance(int(t))
        if variance == "small"
        else 1 - d.alphas_cumprod[int(t)] / d.alphas_cumprod[int(d.previous_timestep(int(t)))]
        for t in chain.timesteps[1:]
    ]
    torch.testing.assert_close(ours_var[1:], torch.stack(theirs_var).float(), rtol=1e-4, atol=1e-7)

    noise, x_T, g = _noise(f"ddpm-{variance}-{K}")
    ours = ddpm(eps_fn, x_T, chain, noise, variance, clip_x0=True)
    x = x_T.clone()
    for t in d.timesteps:
        x = d.step(eps_fn(x, t.view(1)), int(t), x, generator=g).prev_sample
    assert ours.abs().max() < 1.5 and (ours.abs() < 0.99).any()
    torch.testing.assert_close(ours, x, rtol=0, atol=ATOL)


def test_ddpm_single_step_mean_and_clipping():
    """One step from the same x_t and eps, noise removed: the posterior mean with a clipped x0."""
    d = diffusers.DDPMScheduler(**KW, variance_type="fixed_small", clip_sample=True)
    d.set_timesteps(T)
    x = 2.5 * torch.randn(1, 1, H, W, generator=torch.Generator().manual_seed(3))
    for i in (99, 60, 20, 1):
        eps = eps_fn(x, torch.tensor([i]))
        g = torch.Generator().manual_seed(i)
        out = d.step(eps, i, x, generator=g)
        z = torch.randn((1, 1, H, W), generator=torch.Generator().manual_seed(i))
        mean_theirs = out.prev_sample - d._get_variance(i).sqrt() * z
        ab = SCHED.alpha_bar[i].float()
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        mean_ours = SCHED.coef_x0[i].float() * x0 + SCHED.coef_xt[i].float() * x
        # diffusers forms 1 - alpha_bar in float32: near t = 0 (alpha_bar ~ 0.998) that cancellation costs
        # ~3e-5 relative on sqrt(1 - alpha_bar), times a large eps; ours is formed in float64
        torch.testing.assert_close(out.pred_original_sample, x0, rtol=0, atol=ATOL)
        torch.testing.assert_close(mean_ours, mean_theirs, rtol=0, atol=ATOL)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("K,spacing", [(T, "leading"), (10, "trailing"), (4, "trailing")])
def test_ddim_chain_matches_diffusers(K, spacing, eta):
    """diffusers' DDIM steps from t to t - T // K; with "trailing" spacing that is the chain of its
    timesteps, which we rebuild with our own maths (alpha_bar at the kept steps, alpha_bar_prev = 1 at
    the last step, as diffusers' set_alpha_to_one)."""
    d = diffusers.DDIMScheduler(**KW, clip_sample=True, set_alpha_to_one=True, timestep_spacing=spacing)
    d.set_timesteps(K)
    ts = d.timesteps.tolist()
    assert all(a - b == T // K for a, b in zip(ts, ts[1:] + [ts[-1] - T // K]))  # consecutive chain
    chain = chain_at(ts)
    noise, x_T, g = _noise(f"ddim-{K}-{eta}")
    ours = ddim(eps_fn, x_T, chain, noise, eta=eta, clip_x0=True)
    x = x_T.clone()
    for t in d.timesteps:
        # improved-diffusion's DDIM recomputes eps from the clipped x0: use_clipped_model_output=True
        x = d.step(eps_fn(x, t.view(1)), int(t), x, eta=eta, use_clipped_model_output=True, generator=g).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=ATOL)


def test_ddim_single_step_given_alpha_bars():
    """One DDIM step (eta = 0) from alpha_bar_t and alpha_bar_prev alone, ours against diffusers'."""
    d = diffusers.DDIMScheduler(**KW, clip_sample=False, set_alpha_to_one=True)
    d.set_timesteps(10)  # leading: 90, 80, ..., 0; each step goes from t to t - 10
    x = torch.randn(1, 1, H, W, generator=torch.Generator().manual_seed(0))
    for t in (90, 50, 10):
        eps = eps_fn(x, torch.tensor([t]))
        theirs = d.step(eps, t, x, eta=0.0).prev_sample
        chain = chain_at([t - 10, t])  # step index 1 is t; its alpha_bar_prev is alpha_bar[t - 10]
        seen = []

        def record(x_, t_, eps=eps, seen=seen):
            seen.append(x_)
            return eps if len(seen) == 1 else torch.zeros_like(x_)

        ddim(record, x, chain, None, eta=0.0, clip_x0=False)
        torch.testing.assert_close(seen[1], theirs, rtol=0, atol=1e-5)  # the state after our first step


@pytest.mark.parametrize("K", [10, 20])
def test_dpm_solver_pp_2m_matches_diffusers(K):
    d = diffusers.DPMSolverMultistepScheduler(
        **KW, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=False, final_sigmas_type="zero"
    )
    d.set_timesteps(K)
    chain = chain_at(d.timesteps.tolist())
    noise, x_T, _ = _noise(f"dpm-{K}")
    ours = dpm_solver_pp(eps_fn, x_T, chain, noise, clip_x0=False)
    x = x_T.clone()
    for t in d.timesteps:
        x = d.step(eps_fn(x, t.view(1)), t, x).prev_sample
    assert math.isfinite(float(ours.abs().max()))
    torch.testing.assert_close(ours, x, rtol=0, atol=ATOL)
