import json
from dataclasses import replace

import pytest
import torch

from conftest import tiny_config
from segdiff.api import SegDiff
from segdiff.errors import CheckpointError, UserError
from segdiff.train.ema import EMA, ema_decay
from segdiff.train.loop import train


def test_ema_warmup_and_update():
    assert ema_decay(0.9999, 0) == pytest.approx(0.1)
    assert ema_decay(0.9999, 90) == pytest.approx(91 / 100)
    assert ema_decay(0.9999, 10**7) == 0.9999
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, 0.9)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(net, 0)  # decay 0.1
    for b, p in zip(before, ema.model.parameters()):
        torch.testing.assert_close(p, 0.1 * b + 0.9 * torch.ones_like(b))


def test_checkpoint_round_trip(tmp_path):
    model = SegDiff(tiny_config(), "cpu")
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path / "m")
    loaded = SegDiff.load(tmp_path / "m", weights="raw")
    image = torch.rand(3, 16, 16)
    a, b = model.predict(image, seed=1), loaded.predict(image, seed=1)
    assert torch.equal(a.prob, b.prob)
    other = replace(tiny_config(), model=replace(tiny_config().model, model_channels=8))
    other.save(tmp_path / "m" / "config.json")
    with pytest.raises(CheckpointError, match="another configuration"):
        SegDiff.load(tmp_path / "m", weights="raw")


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors")), load_file(str(run / "ema.safetensors"))


def _losses(run):
    return [
        r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"
    ]


def test_exact_resume_is_bitwise(tiny_data, tmp_path):
    cfg = tiny_config(max_steps=6, val_every=3, save_every=3)
    cfg = replace(cfg, model=replace(cfg.model, dropout=0.1))  # the global RNG state must be restored too
    full = train(tiny_data, tmp_path / "full", cfg, device="cpu", progress=False)
    cfg_a = tiny_config(max_steps=3, val_every=3, save_every=3)
    cfg_a = replace(cfg_a, model=replace(cfg_a.model, dropout=0.1))
    train(tiny_data, tmp_path / "part", cfg_a, device="cpu", progress=False)
    cfg_b = replace(cfg_a, train=replace(cfg_a.train, max_steps=6))  # only the length changes on resume
    resumed = train(tiny_data, tmp_path / "part", cfg_b, resume=True, device="cpu", progress=False)
    assert full["step"] == resumed["step"] == 6
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")
    for a, b in zip(_weights(tmp_path / "full"), _weights(tmp_path / "part")):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    st = torch.load(tmp_path / "part" / "train_state.pt", weights_only=True)
    assert st["step"] == 6 and "torch" in st["rng"]
    assert json.loads((tmp_path / "part" / "split.json").read_text())["val_source"].startswith("held out")
    assert (tmp_path / "part" / "best.safetensors").is_file() and (tmp_path / "part" / "curves.png").is_file()


def test_refuses_to_overwrite_a_run_and_detects_torn_checkpoint(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "r", tiny_config(max_steps=2), device="cpu", progress=False)
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny_data, tmp_path / "r", tiny_config(max_steps=2), device="cpu", progress=False)
    # a model file from another step than the training state: resume must refuse, not silently mix
    from segdiff.checkpoint import read_weights, write_files

    state, _ = read_weights(tmp_path / "r" / "model.safetensors")
    write_files({tmp_path / "r" / "model.safetensors": (state, {"step": 1})})
    with pytest.raises(CheckpointError, match="disagree"):
        train(tiny_data, tmp_path / "r", tiny_config(max_steps=4), resume=True, device="cpu", progress=False)
