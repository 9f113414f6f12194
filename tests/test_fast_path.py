"""The fast sampling path against the reference path (the authors' way), on a CPU in fp32.

Tolerances (x0 lies in [-1, 1]):
* same batch layout (one image, one generation per network batch): the two paths run the same arithmetic
  on the same noise and must agree exactly (atol 0): G(I) cached = G(I) recomputed at every step.
* default layouts (2 images, G(I) on a batch of 2, generations batched vs one after another): CPU kernels
  round differently for different batch sizes (G(I) differs by ~5e-7, one network call by ~1e-6, ATOL_CALL
  = 1e-5). Every step divides by sqrt(alpha_bar_t) (up to 1/sqrt(2e-5) ~ 220 at T = 100), so these
  float32 rounding differences reach x0 amplified: observed up to 6e-5 after 4 or 10 steps, required
  ATOL_LAYOUT = 2e-4. The same bound holds for chunking (batch_generations 1 vs G).
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from segdiff.bench.reference import reference_sample_x0
from segdiff.config import PredictConfig
from segdiff.diffusion import make_schedule
from segdiff.diffusion.samplers import ddim
from segdiff.model import SegDiffUNet
from segdiff.predict.ensemble import noise_keys, sample_x0
from segdiff.rng import GenerationNoise

ATOL_CALL = 1e-5
ATOL_LAYOUT = 2e-4
T = 100  # the paper's T (the tiny test schedule at T = 10 ends at alpha_bar ~ 1e-17: extreme amplification)


def _net() -> SegDiffUNet:
    torch.manual_seed(0)
    net = SegDiffUNet(tiny_config(T).model, num_timesteps=T)
    # the output conv is zero-initialised (eps = 0 would make every comparison trivial): perturb all weights
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(1)
    return _net(), make_schedule(T), torch.randn(2, 3, 16, 16, generator=g)


class CountingNet(torch.nn.Module):
    """Counts calls to G (encode_image) and to the noise predictor."""

    def __init__(self, net):
        super().__init__()
        self.net, self.g_calls, self.g_images, self.calls = net, 0, 0, 0

    def encode_image(self, image):
        self.g_calls += 1
        self.g_images += image.shape[0]
        return self.net.encode_image(image)

    def forward(self, x, t, cond):
        self.calls += 1
        return self.net(x, t, cond)


CASES = [
    dict(sampler="ddpm", variance="large"),
    dict(sampler="ddpm", variance="small"),
    dict(sampler="ddim", eta=0.0),
    dict(sampler="ddim", eta=0.7),
    dict(sampler="dpm++"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_fast_path_equals_reference_exactly_in_the_same_batch_layout(setup, case):
    net, sched, image = setup
    opts = PredictConfig(generations=3, sampling_steps=4, batch_generations=1, **case)
    fast = sample_x0(net, sched, image[1:], [7], opts)
    ref = reference_sample_x0(net, sched, image[1:], [7], opts)
    assert fast.shape == ref.shape == (1, 3, 16, 16)
    assert fast.std() > 0.05  # not a trivial (constant) output
    torch.testing.assert_close(fast, ref, rtol=0, atol=0)


@pytest.mark.parametrize("steps", [4, 10])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_fast_path_equals_reference_for_the_same_noise(setup, case, steps):
    net, sched, image = setup
    opts = PredictConfig(generations=3, sampling_steps=steps, batch_generations=30, **case)
    fast = sample_x0(net, sched, image, ["a", 7], opts)
    ref = reference_sample_x0(net, sched, image, ["a", 7], opts)
    assert fast.shape == ref.shape == (2, 3, 16, 16)
    assert fast.std() > 0.05
    torch.testing.assert_close(fast, ref, rtol=0, atol=ATOL_LAYOUT)
    # the "generations batched" variant of the authors' way draws the same noise too
    batched = reference_sample_x0(net, sched, image, ["a", 7], opts, batched=True)
    torch.testing.assert_close(batched, ref, rtol=0, atol=ATOL_LAYOUT)


def test_batch_layout_changes_one_network_call_by_rounding_only(setup):
    net, _, image = setup
    cond2, cond1 = net.encode_image(image), net.encode_image(image[1:])
    torch.testing.assert_close(cond2[1:], cond1, rtol=0, atol=ATOL_CALL)
    x, t = torch.randn(3, 1, 16, 16), torch.full((3,), 50)
    batched = net(x, t, cond2[1:])  # 3 generations broadcast over one G(I)
    one_by_one = torch.cat([net(x[i : i + 1], t[:1], cond1) for i in range(3)])
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=ATOL_CALL)


def test_fast_path_computes_G_once_reference_at_every_step(setup):
    net, sched, image = setup
    opts = PredictConfig(generations=3, sampling_steps=4)
    fast, ref = CountingNet(net), CountingNet(net)
    sample_x0(fast, sched, image, [0, 1], opts)
    reference_sample_x0(ref, sched, image, [0, 1], opts)
    assert (fast.g_calls, fast.g_images, fast.calls) == (1, 2, 4)  # 2 images x 3 generations in one batch
    assert (ref.g_calls, ref.calls) == (2 * 3 * 4, 2 * 3 * 4)


@pytest.mark.parametrize("per_batch", [1, 2, 3, 4, 100])
def test_chunking_gives_identical_results(setup, per_batch):
    net, sched, image = setup
    base = sample_x0(net, sched, image, [0, 1], PredictConfig(generations=3, sampling_steps=3, batch_generations=3))
    out = sample_x0(
        net, sched, image, [0, 1], PredictConfig(generations=3, sampling_steps=3, batch_generations=per_batch)
    )
    torch.testing.assert_close(out, base, rtol=0, atol=ATOL_LAYOUT)


def test_first_generations_do_not_depend_on_how_many(setup):
    """Generation k's noise is keyed by k: the first n of G samples are the samples of an n-generation run."""
    net, sched, image = setup
    five = sample_x0(net, sched, image, [0, 1], PredictConfig(generations=5, sampling_steps=3))
    two = sample_x0(net, sched, image, [0, 1], PredictConfig(generations=2, sampling_steps=3))
    torch.testing.assert_close(five[:, :2], two, rtol=0, atol=ATOL_LAYOUT)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_respacing_with_K_equal_T_is_the_full_chain(setup, sampler):
    net, _, image = setup
    sched = make_schedule(30)  # a shorter chain keeps the test fast; the network accepts any t < T
    full = sample_x0(
        net, sched, image[:1], [0], PredictConfig(generations=2, sampling_steps=None, sampler=sampler, eta=0.5)
    )
    same = sample_x0(
        net, sched, image[:1], [0], PredictConfig(generations=2, sampling_steps=30, sampler=sampler, eta=0.5)
    )
    torch.testing.assert_close(same, full, rtol=0, atol=0)
    fewer = sample_x0(
        net, sched, image[:1], [0], PredictConfig(generations=2, sampling_steps=5, sampler=sampler, eta=0.5)
    )
    assert not torch.allclose(fewer, full)


class NoMoreNoise:
    """Noise for x_T only: a sampler that draws per-step noise fails."""

    def __init__(self, noise):
        self.noise, self.used = noise, False

    def randn(self, shape, device):
        if self.used:
            raise AssertionError("DDIM with eta = 0 drew per-step noise")
        self.used = True
        return self.noise.randn(shape, device)


def test_ddim_eta0_is_deterministic_and_draws_only_x_T(setup):
    net, sched, image = setup
    opts = PredictConfig(generations=3, sampling_steps=5, sampler="ddim", eta=0.0)
    a = sample_x0(net, sched, image[:1], [0], opts)
    b = sample_x0(net, sched, image[:1], [0], opts)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    noise = NoMoreNoise(GenerationNoise.for_keys(noise_keys([0], 3, 0)[0], "cpu"))
    x_T = noise.randn((1, 16, 16), "cpu")
    cond = net.encode_image(image[:1])
    direct = ddim(lambda x, t: net(x, t, cond), x_T, sched.respace(5), noise, eta=0.0)
    torch.testing.assert_close(direct[:, 0], a[0], rtol=0, atol=0)
    other_seed = sample_x0(
        net, sched, image[:1], [0], PredictConfig(generations=3, sampling_steps=5, sampler="ddim", seed=1)
    )
    assert not torch.allclose(other_seed, a)


def test_channels_last_flag_gives_the_same_result(setup):
    net, sched, image = setup
    import copy

    cl = copy.deepcopy(net)
    opts = PredictConfig(generations=2, sampling_steps=3)
    base = sample_x0(net, sched, image, [0, 1], opts)
    out = sample_x0(cl, sched, image, [0, 1], PredictConfig(generations=2, sampling_steps=3, channels_last=True))
    assert cl.F.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, base, rtol=0, atol=ATOL_LAYOUT)
    with pytest.raises(ValueError, match="compile"):
        sample_x0(net, sched, image, [0, 1], PredictConfig(generations=2, sampling_steps=3, compile="fast"))


def test_compiled_module_is_cached_and_not_copied_with_the_network(setup):
    import copy

    from segdiff.predict.ensemble import prepare_net

    net = copy.deepcopy(setup[0])
    compiled = prepare_net(net, PredictConfig(compile="default"))  # torch.compile is lazy: nothing runs here
    assert prepare_net(net, PredictConfig(compile="default")) is compiled
    assert prepare_net(net, PredictConfig()) is net
    assert len(copy.deepcopy(net)._segdiff_compiled) == 0  # EMA copies and checkpoints stay plain


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_fast_bf16_and_reference_fp16_run_and_agree_in_fp32():
    net = _net().cuda()
    sched = make_schedule(T)
    image = torch.randn(2, 3, 16, 16, device="cuda")
    opts = PredictConfig(generations=3, sampling_steps=4)
    fast = sample_x0(net, sched, image, [0, 1], opts)  # bf16 autocast
    ref = reference_sample_x0(net, sched, image, [0, 1], opts)  # fp16 autocast
    assert fast.dtype == ref.dtype == torch.float32 and torch.isfinite(fast).all() and torch.isfinite(ref).all()
    # in fp32 on the GPU the two paths agree as on the CPU (TF32 convs would not: switch them off)
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        fast32 = sample_x0(net, sched, image, [0, 1], PredictConfig(generations=3, sampling_steps=4, amp="fp32"))
        ref32 = reference_sample_x0(net, sched, image, [0, 1], opts, amp="fp32")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    torch.testing.assert_close(fast32, ref32, rtol=0, atol=1e-4)


def test_benchmark_smoke_reports_both_paths_and_training():
    from segdiff.bench.speed import Protocol, format_report, run_benchmark

    proto = Protocol(
        generations=2,
        sampling_steps=10,
        timed_sampling_steps=1,
        repeats=1,
        warmup=0,
        train_steps=1,
        train_warmup=0,
        matmul_n=64,
    )
    report = run_benchmark([tiny_config(T)], torch.device("cpu"), proto, progress=lambda m: None)
    res = report["presets"][0]
    fast, ref = res["fast"]["default"], res["reference"]["sequential"]
    assert fast["scaled"] and fast["scale"] == 10 and "measured on 1 of 10 steps" in fast["how"]
    assert ref["seconds_per_image"] == pytest.approx(10 * ref["measured_seconds"])
    assert fast["speedup_vs_reference"] == pytest.approx(ref["seconds_per_image"] / fast["seconds_per_image"])
    assert res["gflops_per_forward_without_G"] > 0 and res["gflops_G_per_image"] > 0 and fast["tflops"] > 0
    assert res["train"]["ours"]["samples_per_s"] > 0 and res["train"]["plain"]["samples_per_s"] > 0
    assert report["environment"]["torch"] == torch.__version__ and report["protocol"]["sampling_steps"] == 10
    assert "fast:default" in format_report(report)
