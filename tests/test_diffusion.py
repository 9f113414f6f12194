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
