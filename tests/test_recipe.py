"""Issue 9: time budget with exact resume, lr schedule, x0-prediction, timestep weighting, the selection
rule on validation, the one-pass baseline."""

import itertools
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import tiny_config
from segdiff.api import SegDiff
from segdiff.bench.monuseg.selection import choose_setting
from segdiff.config import PredictConfig, RunConfig, TrainConfig, preset
from segdiff.diffusion.gaussian import q_sample, training_loss
from segdiff.diffusion.schedule import make_schedule, sample_timestep, timestep_probabilities
from segdiff.predict.ensemble import sample_x0
from segdiff.train import loop
from segdiff.train.schedule import learning_rate, should_compile, steps_for_budget


def _rows(run, kind="train"):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _weights(run):
    from safetensors.torch import load_file

    return [load_file(str(run / f)) for f in ("model.safetensors", "ema.safetensors")]


def test_steps_for_budget_arithmetic():
    # 60 s budget, 10 s gone at the fix (compile included), 20 probe steps in 2 s: 50 s left at 0.1 s/step
    assert steps_for_budget(60.0, 10.0, 2.0, 20, 25) == 25 + 500
    assert steps_for_budget(60.0, 59.95, 2.0, 20, 25) == 25  # 0.05 s left: not one more step
    assert steps_for_budget(60.0, 90.0, 2.0, 20, 25) == 25  # over budget: the steps done stay done
    with pytest.raises(ValueError):
        steps_for_budget(60.0, 1.0, 0.0, 20, 25)


def test_lr_schedule_follows_steps():
    tc = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, lr_schedule="cosine", lr_min=1e-5)
    assert learning_rate(tc, 0) == pytest.approx(1e-4)
    assert learning_rate(tc, 9) == pytest.approx(1e-3)
    assert learning_rate(tc, 10) == pytest.approx(1e-3)
    assert learning_rate(tc, 60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)  # half-way: the mean
    assert learning_rate(tc, 110) == pytest.approx(1e-5)
    lrs = [learning_rate(tc, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    tc = replace(tc, lr_schedule="linear")
    assert learning_rate(tc, 60) == pytest.approx(1e-3 - (1e-3 - 1e-5) * 0.5)
    tc = replace(tc, lr_schedule="constant")
    assert learning_rate(tc, 100) == 1e-3
    # a budget run: the decay starts only after the throughput probe (max_steps unknown before it)
    tc = TrainConfig(lr=1e-3, warmup_steps=2, max_steps=10**9, lr_schedule="cosine", budget_minutes=1.0)
    tc = replace(tc, budget_warmup_steps=5, budget_probe_steps=20)
    assert {learning_rate(tc, s) for s in range(2, 25)} == {1e-3}


def test_should_compile_rule():
    assert should_compile("auto", "cpu", None) == "off"
    assert should_compile("auto", "cuda", None) == "default"
    assert should_compile("auto", "cuda", 3.0) == "off"  # 180 s does not repay ~120 s of compile at 1.5x
    assert should_compile("auto", "cuda", 30.0) == "default"
    assert should_compile("max-autotune", "cpu", 1.0) == "max-autotune"
    with pytest.raises(ValueError):
        should_compile("fast", "cuda", None)


def test_budget_run_fixes_steps_once_and_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    def budget_cfg():
        cfg = tiny_config(
            max_steps=1000,
            val_every=0,
            save_every=0,
            lr_schedule="cosine",
            budget_minutes=0.05,
            budget_warmup_steps=2,
            budget_probe_steps=2,
            warmup_steps=2,
        )
        return replace(cfg, model=replace(cfg.model, dropout=0.1))

    def fake_clock():  # every call of the loop's clock advances 0.05 s: the same measurement in both runs
        ticks = itertools.count()
        monkeypatch.setattr(loop, "_now", lambda: 0.05 * next(ticks))

    fake_clock()
    full = loop.train(tiny_data, tmp_path / "full", budget_cfg(), device="cpu", progress=False)
    saved = RunConfig.load(tmp_path / "full" / "config.json").train
    assert saved.budget_fixed_at == 4 and saved.max_steps == full["step"] == full["max_steps"]
    assert 4 < full["step"] < 60 and full["stopped_by"] == "budget"
    (fix,) = _rows(tmp_path / "full", "budget")
    assert fix["max_steps"] == full["step"] and fix["step"] == 4

    fake_clock()
    real_step, stop_at = loop.train_step, full["step"] - 2
    assert stop_at > 4

    def interrupting(*args, **kwargs):
        if args[5] == stop_at:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_data, tmp_path / "part", budget_cfg(), device="cpu", progress=False)
    monkeypatch.setattr(loop, "train_step", real_step)
    monkeypatch.setattr(loop, "_now", __import__("time").time)  # a different clock: the steps stay fixed
    resumed = loop.train(tiny_data, tmp_path / "part", budget_cfg(), resume=True, device="cpu", progress=False)
    assert resumed["step"] == full["step"]
    assert [r["loss"] for r in _rows(tmp_path / "full")] == [r["loss"] for r in _rows(tmp_path / "part")]
    assert [r["lr"] for r in _rows(tmp_path / "full")] == [r["lr"] for r in _rows(tmp_path / "part")]
    for a, b in zip(_weights(tmp_path / "full"), _weights(tmp_path / "part")):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert all(0.0 <= r["data_wait_frac"] <= 1.0 for r in _rows(tmp_path / "full"))


class _PerfectX0(torch.nn.Module):
    """Outputs the true x0 whatever x_t and t are."""

    def __init__(self, x0, prediction="x0"):
        super().__init__()
        self.x0, self.cfg = x0, SimpleNamespace(prediction=prediction)
        self.w = torch.nn.Parameter(torch.zeros(()))

    def encode_image(self, image):
        return image

    def forward(self, x, t, cond):
        return self.x0.expand(x.shape[0], *self.x0.shape[1:]) + 0 * self.w


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddpm", 4), ("ddim", 3), ("dpm++", 5), ("ddim", 1)])
def test_perfect_x0_predictor_makes_every_sampler_return_x0(sampler, steps):
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float() * 2 - 1
    # T = 100 as in the presets: at T = 20 the capped betas leave alpha_bar_T = 5.6e-11, and one step from x_T
    # (K = 1) cannot return x0 to 1e-4 in float32 (x0 = x_T / sqrt(alpha_bar) - ..., terms of ~1e5)
    sched = make_schedule(100)
    opts = PredictConfig(generations=3, sampling_steps=steps, sampler=sampler, variance="small")
    out = sample_x0(_PerfectX0(x0), sched, torch.zeros(1, 3, 8, 8), [0], opts)
    torch.testing.assert_close(out, x0[:, 0].expand(1, 3, 8, 8), atol=1e-4, rtol=0)
    # the same output read as eps (an eps network's) gives another result: the conversion is what works
    wrong = sample_x0(_PerfectX0(x0, "eps"), sched, torch.zeros(1, 3, 8, 8), [0], opts)
    assert not torch.allclose(wrong, out, atol=1e-2)


def test_training_loss_targets():
    sched = make_schedule(10)
    g = torch.Generator().manual_seed(1)
    x0 = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float() * 2 - 1
    eps, t = torch.randn(2, 1, 4, 4, generator=g), torch.tensor([3, 9])
    cond = torch.zeros(2, 1)
    assert training_loss(lambda x, tt, c: x0, x0, cond, t, eps, sched, "x0") == 0
    assert training_loss(lambda x, tt, c: eps, x0, cond, t, eps, sched, "eps") == 0
    x_t = q_sample(x0, t, eps, sched)
    assert training_loss(lambda x, tt, c: x, x0, cond, t, eps, sched, "x0") == torch.mean((x_t - x0) ** 2)


def test_timestep_weighting_distribution():
    T = 10
    p = timestep_probabilities(T, "high_noise")
    assert p.sum() == pytest.approx(1.0) and np.all(np.diff(p) > 0) and p[-1] / p[0] == pytest.approx(2 * T - 1)
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = np.bincount([sample_timestep(T, "high_noise", g) for _ in range(n)], minlength=T)
    assert np.abs(counts / n - p).max() < 0.01
    # the default draw is Algorithm 2's, unchanged (the presets stay bitwise identical)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [sample_timestep(T, "uniform", g1) for _ in range(50)] == [
        int(torch.randint(T, (), generator=g2)) for _ in range(50)
    ]


@pytest.mark.parametrize("kind", ["uniform", "high_noise"])
def test_the_api_loss_draws_t_as_the_run_trains(kind, monkeypatch):
    """Issue 19, bug 5: SegDiff.loss ("for your own loop") drew t uniformly whatever train.t_sampling said."""
    import segdiff.train.step

    seen = []
    monkeypatch.setattr(
        segdiff.train.step, "training_loss", lambda net, x0, cond, t, *a, **k: seen.append(t) or t.float().mean()
    )
    model = SegDiff(tiny_config(t_sampling=kind), "cpu")
    n, T = 4000, model.config.diffusion.steps
    g = torch.Generator().manual_seed(0)
    model.loss(torch.rand(n, 3, 8, 8, generator=g), torch.zeros(n, 1, 8, 8), generator=g)
    counts = np.bincount(seen[0].cpu().numpy(), minlength=T)
    assert len(counts) == T and np.abs(counts / n - timestep_probabilities(T, kind)).max() < 0.02


def test_selection_rule_cheapest_within_half_a_point():
    rows = [
        {"name": "a", "iou": 70.0, "cost_s": 100.0},
        {"name": "b", "iou": 69.6, "cost_s": 40.0},  # within 0.5 of the best, cheaper
        {"name": "c", "iou": 69.4, "cost_s": 10.0},  # cheapest, but 0.6 below the best
        {"name": "d", "iou": 69.9, "cost_s": 40.0},  # as cheap as b, better: the tie goes to it
    ]
    assert choose_setting(rows, 1000.0)["row"]["name"] == "d"
    assert choose_setting(rows, 30.0)["row"]["name"] == "c"  # nothing within tolerance fits: best that fits
    assert choose_setting(rows, 5.0)["row"]["name"] == "c"  # nothing fits: the cheapest
    assert choose_setting(rows[:3], 1000.0)["row"]["name"] == "b"
    assert choose_setting(rows, 1000.0)["best_iou"] == 70.0


def test_onepass_baseline_trains_and_predicts_one_map(tiny_data, tmp_path):
    cfg = tiny_config(max_steps=2, val_every=0, save_every=0)
    cfg = replace(cfg, model=replace(cfg.model, prediction="onepass"))
    summary = loop.train(tiny_data, tmp_path / "r", cfg, device="cpu", progress=False)
    assert summary["step"] == 2
    losses = [r["loss"] for r in _rows(tmp_path / "r")]
    assert all(np.isfinite(losses)) and losses[0] > 0
    model = SegDiff.load(tmp_path / "r", weights="raw")
    pred = model.predict(torch.rand(3, 16, 16), generations=3, return_samples=True)
    assert torch.equal(pred.samples[0, 0], pred.samples[0, 2]) and float(pred.uncertainty.max()) == 0.0
    assert torch.equal(pred.mask, pred.prob >= 0.5)


def test_new_fields_leave_the_paper_presets_unchanged():
    for name in ("monuseg", "tiny", "vaihingen", "cityscapes"):
        cfg = preset(name)
        assert cfg.model.prediction == "eps" and cfg.train.t_sampling == "uniform"
        assert cfg.train.lr_schedule == "constant" and cfg.train.budget_minutes is None
        assert cfg.train.compile == "off"
