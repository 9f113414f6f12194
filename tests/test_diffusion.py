from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segdiff.diffusion import make_schedule, q_sample, x0_from_eps
from segdiff.diffusion.gaussian import posterior_mean
from segdiff.diffusion.samplers import ddim, ddpm, sample
from segdiff.diffusion.schedule import linear_betas
from segdiff.rng import GenerationNoise, generator


def test_scaled_schedule_endpoints():
    b = linear_betas(100, "scaled")
    assert b[0] == pytest.approx(1e-3) and b[-1] == pytest.approx(0.2)
    s = make_schedule(100, "scaled")
    assert float(s.alpha_bar[-1].sqrt()) == pytest.approx(0.0045, abs=5e-4)
    assert s.betas.dtype == torch.float64


def test_paper_schedule_endpoints_leave_signal_at_T():
    b = linear_betas(100, "paper")
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(2e-2)
    # eq. 14: beta_t = (1e-4 (T - t) + 2e-2 (t - 1)) / (T - 1)
    t = np.arange(1, 101)
    np.testing.assert_allclose(b, (1e-4 * (100 - t) + 2e-2 * (t - 1)) / 99)
    s = make_schedule(100, "paper")
    assert float(s.alpha_bar[-1]) == pytest.approx(0.36, abs=0.01)
    assert float(s.alpha_bar[-1].sqrt()) == pytest.approx(0.60, abs=0.01)


def test_q_sample_and_x0_closed_form():
    s = make_schedule(100)
    x0, eps, t = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5), torch.tensor([0, 10, 50, 99])
    xt = q_sample(x0, t, eps, s)
    ab = torch.cumprod(1 - torch.linspace(1e-3, 0.2, 100, dtype=torch.float64), 0)[t].float().view(-1, 1, 1, 1)
    torch.testing.assert_close(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    torch.testing.assert_close(x0_from_eps(xt, t, eps, s), x0, rtol=1e-4, atol=1e-3)


def test_posterior_against_eq_9_and_10():
    s = make_schedule(100)
    b = s.betas
    a = 1 - b
    ab = torch.cumprod(a, 0)
    t = 37
    var = (1 - ab[t - 1]) / (1 - ab[t]) * b[t]
    assert float(s.posterior_variance[t]) == pytest.approx(float(var))
    x0, xt = torch.randn(1, 1, 3, 3), torch.randn(1, 1, 3, 3)
    mu = ab[t - 1].sqrt() * b[t] / (1 - ab[t]) * x0 + a[t].sqrt() * (1 - ab[t - 1]) / (1 - ab[t]) * xt
    torch.testing.assert_close(posterior_mean(x0, xt, torch.tensor([t]), s), mu.float())


def test_respacing_keeps_alpha_bar_and_original_timesteps():
    s = make_schedule(100)
    r = s.respace(10)
    assert len(r) == 10 and r.timesteps[0] == 0 and r.timesteps[-1] == 99
    torch.testing.assert_close(r.alpha_bar, s.alpha_bar[r.timesteps])
    assert s.respace(100) is s
    with pytest.raises(ValueError):
        s.respace(101)


def _eps_fn(x, t):
    # a fixed, t-dependent "network"
    return torch.tanh(x) * (0.5 + t.float().view(-1, 1, 1, 1) / 200)


def _noise(n=3, seed=0):
    return GenerationNoise([generator(seed, k) for k in range(n)])


def test_ddpm_without_clipping_is_algorithm_1():
    s = make_schedule(20, "paper")
    noise = _noise()
    x_T = noise.randn((1, 4, 4), "cpu")
    out = ddpm(_eps_fn, x_T, s, noise, variance="small", clip_x0=False)
    # Algorithm 1, literally
    noise2 = _noise()
    x = noise2.randn((1, 4, 4), "cpu").double()
    b = s.betas
    a, ab = 1 - b, torch.cumprod(1 - b, 0)
    for i in reversed(range(20)):
        eps = _eps_fn(x.float(), torch.full((3,), i)).double()
        x = (x - (1 - a[i]) / (1 - ab[i]).sqrt() * eps) / a[i].sqrt()
        if i > 0:
            x = x + ((1 - ab[i - 1]) / (1 - ab[i]) * b[i]).sqrt() * noise2.randn((1, 4, 4), "cpu").double()
    torch.testing.assert_close(out, x.float(), rtol=1e-4, atol=1e-4)


def test_full_respacing_equals_ddpm_and_sampling_is_seeded():
    s = make_schedule(20)
    noise = _noise()
    a = sample("ddpm", _eps_fn, noise.randn((1, 4, 4), "cpu"), s, noise, sampling_steps=20)
    noise = _noise()
    b = ddpm(_eps_fn, noise.randn((1, 4, 4), "cpu"), s, noise)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    noise = _noise(seed=1)
    c = ddpm(_eps_fn, noise.randn((1, 4, 4), "cpu"), s, noise)
    assert not torch.allclose(a, c)


def test_ddim_eta0_is_deterministic_given_x_T():
    s = make_schedule(50)
    x_T = torch.randn(2, 1, 4, 4)
    a = ddim(_eps_fn, x_T, s.respace(10), _noise(2, 0), eta=0.0)
    b = ddim(_eps_fn, x_T, s.respace(10), _noise(2, 5), eta=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = ddim(_eps_fn, x_T, s.respace(10), _noise(2, 5), eta=1.0)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_samplers_recover_a_known_x0(name):
    """With the exact eps of a fixed target x0, every sampler must return that x0."""
    s = make_schedule(100)
    target = torch.tensor([-1.0, 1.0, 0.5, -0.5]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)

    def eps_exact(x, t):
        ab = s.alpha_bar[t].float().view(-1, 1, 1, 1)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    noise = _noise(2)
    out = sample(name, eps_exact, noise.randn((1, 2, 2), "cpu"), s, noise, sampling_steps=10)
    torch.testing.assert_close(out, target, rtol=0, atol=1e-3 if name != "ddpm" else 0.05)


# -- the exact oracle over every chain length (issue 19, bug 1) -------------------------------------------

TARGET = torch.tensor([-1.0, 1.0, 0.6, -0.3]).view(1, 1, 2, 2)


class _Oracle(torch.nn.Module):
    """A perfect network for the fixed x0 TARGET: given x_t and the original timestep t it outputs the exact
    eps of eq. 5 (prediction "eps") or TARGET itself (prediction "x0"). cond is the image, unused."""

    def __init__(self, sched, prediction: str):
        super().__init__()
        self.sched, self.cfg = sched, SimpleNamespace(mask_channels=1, prediction=prediction)

    def encode_image(self, image):
        return image

    def forward(self, x, t, cond):
        if self.cfg.prediction == "x0":
            return TARGET.expand_as(x)
        ab = self.sched.alpha_bar[t].view(-1, 1, 1, 1)  # float64: the oracle adds no rounding of its own
        return ((x.double() - ab.sqrt() * TARGET.double()) / (1 - ab).sqrt()).float()


@pytest.mark.parametrize("kind", ["scaled", "paper"])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_an_exact_oracle_recovers_x0_at_every_chain_length(kind, name, prediction):
    """Every K in 1..T, through the prediction path (sample_x0: respacing, an x0 network's eps of eq. 5).
    The 0.999 cap that respace once put on its betas shrank the eps oracle's x0 to 0.14 x at K = 1."""
    from segdiff.config import PredictConfig
    from segdiff.predict.ensemble import sample_x0

    T = 100
    s = make_schedule(T, kind)
    net = _Oracle(s, prediction)
    image = torch.zeros(1, 1, 2, 2)
    worst = {}
    for K in range(1, T + 1):
        opts = PredictConfig(generations=2, sampling_steps=K, sampler=name, clip_x0=False, compile="off", eta=1.0)
        out = sample_x0(net, s, image, [0], opts)  # [1, 2 generations, 2, 2]
        worst[K] = float((out - TARGET[0]).abs().max())
    bad = {K: round(e, 4) for K, e in worst.items() if e > 1e-4}
    assert not bad, f"x0 not recovered at these chain lengths K (max error): {bad}"


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_the_eps_oracle_through_sample_at_every_chain_length(name):
    """The samplers' own entry point (`sample`, which respaces), eps models, every K in 1..T."""
    s = make_schedule(100)
    oracle = _Oracle(s, "eps")
    for K in range(1, 101):
        noise = _noise(2)
        out = sample(name, lambda x, t: oracle(x, t, None), noise.randn((1, 2, 2), "cpu"), s, noise, K, clip_x0=False)
        torch.testing.assert_close(out, TARGET.expand_as(out), rtol=0, atol=1e-4, msg=f"K = {K}")


@pytest.mark.parametrize("T", [1, 2, 5, 10, 30])
@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++"])
def test_tiny_T_chains_whose_betas_linear_betas_caps(T, name):
    """Below T = 50 the scaled betas are capped at 0.999 (linear_betas), so alpha_bar_T falls to ~1e-17 at
    T = 10: x_T then carries less signal than float32 resolves, and one step from x_T cannot recover x0.
    Every respaced chain still has alphas in (0, 1) and the original alpha_bar at its steps (beta' = 1 - 1e-17
    rounds to 1.0: the chain keeps its alphas, not 1 - beta', else alpha_bar is 0), sampling stays
    finite and clipped, and from K = 2 on the oracle's x0 comes back exactly (its last steps see x0)."""
    s = make_schedule(T)
    oracle = _Oracle(s, "eps")
    for K in range(1, T + 1):
        chain = s.respace(K)
        assert ((chain.alphas > 0) & (chain.alphas < 1)).all() and (chain.alpha_bar > 0).all()
        torch.testing.assert_close(chain.alpha_bar, s.alpha_bar[chain.timesteps], rtol=1e-12, atol=0)
        noise = _noise(2)
        out = sample(name, lambda x, t: oracle(x, t, None), noise.randn((1, 2, 2), "cpu"), s, noise, K)
        assert torch.isfinite(out).all() and out.abs().max() <= 1
        if K >= 2 or float(s.alpha_bar[-1]) > 1e-6:
            torch.testing.assert_close(out, TARGET.expand_as(out), rtol=0, atol=1e-4, msg=f"T = {T}, K = {K}")
