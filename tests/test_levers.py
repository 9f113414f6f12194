"""Issue 20's levers: x0 as logits with the segmentation loss, self-conditioning, staged training, mass at
t = T - 1, a chain started below T; the error AUROC of the uncertainty."""

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import tiny_config
from segdiff.config import ConfigError, PredictConfig, apply_overrides, preset
from segdiff.diffusion.gaussian import q_sample, seg_loss, training_loss, x0_from_output
from segdiff.diffusion.schedule import make_schedule, sample_timestep, timestep_probabilities
from segdiff.metrics.uncertainty import ErrorAUROCAccumulator, confidence_uncertainty, error_auroc
from segdiff.model.unet import SegDiffUNet
from segdiff.predict.ensemble import network_calls, sample_x0
from segdiff.train.loop import train
from segdiff.train.step import LossModule, step_levers


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors")), load_file(str(run / "ema.safetensors"))


def _losses(run):
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if r["kind"] == "train"]


def _batch(n=4, size=16, seed=0, T=10):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, size, size, generator=g)
    x0 = (torch.rand(n, 1, size, size, generator=g) > 0.5).float() * 2 - 1
    return image, x0, torch.randint(T, (n,), generator=g), torch.randn(n, 1, size, size, generator=g)


def test_noop_levers_compute_the_earlier_loss_bitwise():
    """Default lever fields: the loss is the earlier MSE of eq. 18 / the x0 target, bit for bit, and a
    step takes no lever arguments."""
    for prediction in ("x0", "eps"):
        cfg = tiny_config()
        cfg = replace(
            cfg,
            model=replace(cfg.model, prediction=prediction),
            data=replace(cfg.data, mean=(0.5,) * 3, std=(0.25,) * 3),
        )
        torch.manual_seed(0)
        net, sched = SegDiffUNet(cfg.model, 10), make_schedule(10)
        with torch.no_grad():  # the zero-initialised output layer would make every loss equal
            net.out[-1].weight.normal_(0, 0.1)
        image, x0, t, eps = _batch()
        loss = LossModule(net, sched, cfg)(image, x0, t, eps)
        cond = net.encode_image((image - 0.5) / 0.25)
        target = x0 if prediction == "x0" else eps
        old = torch.mean((net(q_sample(x0, t, eps, sched), t, cond).float() - target) ** 2)
        assert torch.equal(loss, old)
        assert step_levers(cfg, 0, 0, 4) == ()


def test_noop_sampling_levers_keep_the_earlier_chain():
    """start_t None and a network without self-conditioning: sample_x0 is the plain chain over the one
    x0->eps conversion (gaussian.eps_from_x0 on the schedule's coefficients), bitwise."""
    from segdiff.diffusion import sample
    from segdiff.diffusion.gaussian import eps_from_x0
    from segdiff.rng import GenerationNoise

    cfg = replace(tiny_config().model, prediction="x0")
    torch.manual_seed(1)
    net, sched = SegDiffUNet(cfg, 10), make_schedule(10)
    with torch.no_grad():
        net.out[-1].weight.normal_(0, 0.1)
    image = torch.rand(1, 3, 16, 16)
    opts = PredictConfig(generations=2, sampling_steps=3, sampler="ddim", compile="off")
    got = sample_x0(net, sched, image, [7], opts)
    table = sched.on("cpu")
    with torch.no_grad():
        cond = net.encode_image(image)
        noise = GenerationNoise.for_keys([(0, 7, 0), (0, 7, 1)], "cpu")
        x_T = noise.randn((1, 16, 16), "cpu")
        ref = sample("ddim", lambda x, t: eps_from_x0(x, t, net(x, t, cond).float(), table), x_T, sched, noise, 3)
    assert torch.equal(got, ref[:, 0][None])


def test_x0_logits_with_segmentation_loss_learns_a_toy_mask():
    cfg = replace(tiny_config().model, prediction="x0", x0_output="logits")
    torch.manual_seed(0)
    net, sched = SegDiffUNet(cfg, 20), make_schedule(20)  # T = 10 of the scaled schedule ends at alpha_bar = 0
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disc = ((yy - 8) ** 2 + (xx - 7) ** 2 < 25).float()
    image = torch.stack([disc * 0.6 + 0.2, 1 - disc, torch.full_like(disc, 0.5)])[None].expand(4, 3, 16, 16)
    x0 = (disc * 2 - 1)[None, None].expand(4, 1, 16, 16)
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        t, eps = torch.randint(20, (4,), generator=g), torch.randn(4, 1, 16, 16, generator=g)
        loss = training_loss(
            net, x0, net.encode_image(image), t, eps, sched, "x0", x0_output="logits", mse_weight=0.0, seg_weight=1.0
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = sample_x0(net, sched, image[:1], [0], PredictConfig(generations=2, sampling_steps=2, sampler="ddim"))
    pred = out[0].mean(0) > 0
    iou = (pred & (disc > 0)).sum() / (pred | (disc > 0)).sum()
    assert iou > 0.9, float(iou)


def test_x0_from_logits_and_class_segmentation_loss():
    z = torch.tensor([[[[0.0, 20.0]]]])
    assert torch.allclose(x0_from_output(z, "logits"), torch.tensor([[[[0.0, 1.0]]]]))
    zk = torch.zeros(1, 3, 1, 2)
    zk[0, 1] = 30.0
    xk = x0_from_output(zk, "logits")
    assert torch.allclose(xk[0, :, 0, 0], torch.tensor([-1.0, 1.0, -1.0]), atol=1e-6)
    onehot = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    assert seg_loss(zk, onehot) < 1e-3 < seg_loss(-zk, onehot)
    valid = torch.tensor([[[[1.0, 0.0]]]])  # the ignored pixel's wrong logits count for nothing
    wrong = zk.clone()
    wrong[0, :, 0, 1] = torch.tensor([30.0, 0.0, 0.0])
    assert torch.equal(seg_loss(wrong, onehot, valid), seg_loss(zk, onehot, valid))


def test_all_levers_resume_bitwise(tiny_data, tmp_path):
    """Self-conditioning (keyed rows, a no-grad pass), the one-pass phase across the resume point, mass at
    T - 1 and the logits loss: N steps == N/2, resume, N/2 more."""

    def cfg(steps):
        c = tiny_config(max_steps=steps, val_every=3, save_every=3, onepass_steps=4, p_t_max=0.3, seg_loss_weight=1.0)
        # dropout: the no-grad pass draws dropout masks from the global RNG too
        model = replace(c.model, dropout=0.1, prediction="x0", x0_output="logits", self_condition=True)
        return replace(c, model=model)

    full = train(tiny_data, tmp_path / "full", cfg(6), device="cpu", progress=False)
    train(tiny_data, tmp_path / "part", cfg(3), device="cpu", progress=False)
    resumed = train(tiny_data, tmp_path / "part", cfg(6), resume=True, device="cpu", progress=False)
    assert full["step"] == resumed["step"] == 6
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    for a, b in zip(_weights(tmp_path / "full"), _weights(tmp_path / "part")):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    assert _weights(tmp_path / "full")[0]["F.weight"].shape[1] == 2  # x_t and the previous x0


def test_step_levers_rows_are_keyed_and_the_phase_counts_steps():
    c = tiny_config(batch_size=64, onepass_steps=2, self_condition_prob=0.5)
    c = replace(c, model=replace(c.model, prediction="x0", self_condition=True))
    assert step_levers(c, 1, 0, 64) == (None, True)  # the one-pass phase: no self-conditioning pass
    rows, phase = step_levers(c, 5, 0, 64)
    assert not phase and 16 < int(rows.sum()) < 48
    assert torch.equal(rows, step_levers(c, 5, 0, 64)[0])  # keyed by (seed, step): the same on resume
    assert torch.equal(rows[32:], step_levers(c, 5, 32, 64)[0])  # a rank's slice of the global batch
    assert not torch.equal(rows, step_levers(c, 6, 0, 64)[0])
    f = tiny_config(max_steps=10, onepass_fraction=0.3)
    assert [step_levers(f, s, 0, 4) for s in (2, 3)] == [(None, True), ()]
    f = replace(f, train=replace(f.train, budget_minutes=1.0, max_steps=10**9))  # a budget run: one-pass until fixed
    assert step_levers(f, 50, 0, 4) == (None, True)
    f = replace(f, train=replace(f.train, budget_fixed_at=20, max_steps=100))
    assert step_levers(f, 29, 0, 4) == (None, True) and step_levers(f, 30, 0, 4) == ()


class _Recorder(torch.nn.Module):
    """A self-conditioned x0 'network' that records the x0 estimate it is given and returns a fixed x0."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.seen = x0, []
        self.cfg = SimpleNamespace(prediction="x0", self_condition=True, x0_output="direct", mask_channels=1)

    def encode_image(self, image):
        return image

    def forward(self, x, t, cond, x0_prev=None):
        self.seen.append((int(t[0]), None if x0_prev is None else x0_prev.clone()))
        return self.x0.expand(x.shape[0], *self.x0.shape[1:])


def test_self_conditioned_sampling_feeds_the_previous_x0_and_warm_start():
    x0 = torch.full((1, 1, 8, 8), 0.5)
    net, sched = _Recorder(x0), make_schedule(20)
    out = sample_x0(
        net, sched, torch.zeros(1, 3, 8, 8), [0], PredictConfig(generations=2, sampling_steps=3, sampler="ddim")
    )
    assert [t for t, _ in net.seen] == [19, 10, 0] and net.seen[0][1] is None
    assert all(torch.allclose(p, torch.full_like(p, 0.5)) for _, p in net.seen[1:])
    torch.testing.assert_close(out, torch.full((1, 2, 8, 8), 0.5), atol=1e-4, rtol=0)
    # the warm start: one pass at T - 1, then the chain from start_t = 6 (3 steps: 6, 3, 0)
    net.seen.clear()
    opts = PredictConfig(generations=2, sampling_steps=3, sampler="ddim", start_t=6)
    out = sample_x0(net, sched, torch.zeros(1, 3, 8, 8), [0], opts)
    assert [t for t, _ in net.seen] == [19, 6, 3, 0]
    torch.testing.assert_close(out, torch.full((1, 2, 8, 8), 0.5), atol=1e-4, rtol=0)
    assert network_calls(1, opts, 20) == 4


def test_lever_fields_are_checked():
    with pytest.raises(ConfigError, match="train.seg_loss_weight.*x0_output"):
        apply_overrides(preset("tiny"), {"model.prediction": "x0", "train.seg_loss_weight": 1.0}).validate()
    with pytest.raises(ConfigError, match="model.x0_output.*prediction = x0"):
        apply_overrides(preset("tiny"), {"model.x0_output": "logits"}).validate()
    with pytest.raises(ConfigError, match="train.p_t_max"):
        apply_overrides(preset("tiny"), {"train.p_t_max": 1.5}).validate()
    with pytest.raises(ConfigError, match="predict.start_t"):
        apply_overrides(preset("tiny"), {"predict.start_t": 99}).validate()
    with pytest.raises(ConfigError, match="predict.sampling_steps"):
        apply_overrides(preset("tiny"), {"predict.start_t": 3}).validate()  # 5 steps from t = 3: too many


def test_mass_at_the_last_timestep():
    p = timestep_probabilities(10, "high_noise", 0.3)
    assert p.sum() == pytest.approx(1.0) and p[-1] == pytest.approx(0.3 + 0.7 * 19 / 100)
    g = torch.Generator().manual_seed(0)
    draws = np.bincount([sample_timestep(10, "high_noise", g, 0.3) for _ in range(4000)], minlength=10) / 4000
    assert np.abs(draws - p).max() < 0.03
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)  # p = 0: no extra draw
    assert [sample_timestep(10, "uniform", g0) for _ in range(20)] == [
        sample_timestep(10, "uniform", g1, 0.0) for _ in range(20)
    ]


def test_error_auroc():
    wrong = np.array([True, True, False, False, False])
    assert error_auroc(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), wrong) == 1.0
    assert error_auroc(np.array([0.0, 0.1, 0.5, 0.6, 0.7]), wrong) == 0.0
    assert error_auroc(np.full(5, 0.2), wrong) == 0.5
    assert error_auroc(np.ones(3), np.zeros(3, bool)) is None
    rng = np.random.default_rng(0)
    acc = ErrorAUROCAccumulator(top=0.5)
    us, ws = [], []
    for _ in range(3):
        w = rng.random(500) < 0.2
        u = np.clip(rng.normal(0.1 + 0.15 * w, 0.05), 0, 0.5)
        acc.add(u, w)
        us.append(u)
        ws.append(w)
    exact = error_auroc(np.concatenate(us), np.concatenate(ws))
    assert acc.pooled() == pytest.approx(exact, abs=2e-3) and exact > 0.9
    assert acc.summary()["n_images"] == 3
    np.testing.assert_allclose(confidence_uncertainty(np.array([0.0, 0.5, 0.9])), [0.0, 0.5, 0.1])


def test_evaluate_reports_the_error_auroc_of_uncertainty_maps(tmp_path):
    from segdiff.data.io import write_float_tiff, write_mask
    from segdiff.metrics.evaluate import evaluate_dirs, format_table

    gt = np.zeros((8, 8), bool)
    gt[2:6, 2:6] = True
    pred = gt.copy()
    pred[2, 2:6] = False  # 4 wrong pixels
    unc = np.where(pred != gt, 0.4, 0.05).astype(np.float32)
    for sub in ("masks", "uncertainty", "prob", "gt/masks"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    write_mask(tmp_path / "masks" / "a.png", pred)
    write_mask(tmp_path / "gt" / "masks" / "a.png", gt)
    write_float_tiff(tmp_path / "uncertainty" / "a.tif", unc)
    write_float_tiff(tmp_path / "prob" / "a.tif", np.where(pred, 0.9, 0.1).astype(np.float32))
    summary = evaluate_dirs(tmp_path, tmp_path / "gt")
    assert summary["uncertainty_auroc"]["pooled"] == pytest.approx(1.0)
    assert summary["confidence_auroc"]["pooled"] == pytest.approx(0.5)  # the same confidence everywhere
    assert "Error AUROC of uncertainty" in format_table(summary)
