"""The ablation variants of paper section 5 (model/fusion.py, model/hardnet.py) and `segdiff ablation`."""

import json
from dataclasses import replace

import pytest
import torch

from conftest import tiny_config
from segdiff.api import SegDiff
from segdiff.config import ConfigError
from segdiff.model import SegDiffUNet
from segdiff.model.hardnet import hardnet_parameters
from segdiff.train.loop import train

# name -> model settings; "inject3" needs a network with at least three downsampling blocks
VARIANTS = {
    "full": {},
    "concat": {"conditioning": "concat"},
    "hardnet": {"encoder": "hardnet"},
    "no-encoder": {"conditioning": "image"},
    "inject1": {"conditioning": "inject", "inject_after": 1},
    "inject3": {"conditioning": "inject", "inject_after": 3, "channel_mult": (1, 2, 2, 2)},
}


def _config(name, **train_kw):
    cfg = tiny_config(**train_kw)
    return replace(cfg, model=replace(cfg.model, **VARIANTS[name])).validate()


def _net(name):
    torch.manual_seed(0)
    net = SegDiffUNet(_config(name).model, num_timesteps=10)
    with torch.no_grad():  # the output conv is zero-initialised: perturb so that outputs depend on every input
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_shape_gradients_and_cached_G(name):
    net = _net(name)
    image, x = torch.randn(2, 3, 16, 16), torch.randn(6, 1, 16, 16)  # 3 generations per image
    t = torch.tensor([1, 2, 3, 4, 5, 6])
    cond = net.encode_image(image)
    eps = net(x, t, cond)
    assert eps.shape == (6, 1, 16, 16)
    # cached G(I) broadcast over the generations equals G recomputed for every row
    recomputed = net(x, t, net.encode_image(image.repeat_interleave(3, 0)))
    torch.testing.assert_close(eps, recomputed, rtol=1e-5, atol=1e-6)
    # the output depends on the image (the conditioning reaches the U-Net)
    assert not torch.allclose(eps, net(x, t, net.encode_image(image + 1)))
    eps.square().mean().backward()
    parts = {"F": net.F, "E": net.encoder, "D": net.decoder}
    if net.G is not None:
        parts["G"] = net.G
    if net.inject is not None:
        parts["inject"] = net.inject
    for part, module in parts.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), (name, part)
    if name == "no-encoder":
        assert net.G is None and net.F.in_channels == 1 + 3  # I concatenated to x_t
    if name == "concat":
        assert net.encoder[0][0].in_layers[-1].in_channels == 2 * 16  # E reads [F(x_t), G(I)]
    if name.startswith("inject"):
        k = VARIANTS[name]["inject_after"]
        assert cond.shape[-2:] == (16 // 2**k, 16 // 2**k)


def test_full_method_keeps_its_weight_names():
    """The method's state dict is unchanged by the variants' code: earlier run folders still load."""
    keys = set(SegDiffUNet(tiny_config().model, 10).state_dict())
    assert "F.weight" in keys and "G.conv_first.weight" in keys
    assert not any(k.startswith("inject") for k in keys)


def test_inject_after_beyond_the_network_is_a_config_error():
    cfg = tiny_config()  # channel_mult (1, 2): one downsampling block
    with pytest.raises(ConfigError, match="model.inject_after"):
        replace(cfg, model=replace(cfg.model, conditioning="inject", inject_after=3)).validate()
    with pytest.raises(ConfigError, match="model.conditioning"):
        replace(cfg, model=replace(cfg.model, conditioning="add")).validate()
    with pytest.raises(ConfigError, match="model.encoder"):
        replace(cfg, model=replace(cfg.model, encoder="resnet")).validate()


def test_hardnet_parameter_count_is_the_documented_one():
    assert hardnet_parameters(3, 128) == 4_124_598  # model/hardnet.py and docs/ablation.md quote it


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_save_load_round_trip(name, tmp_path):
    model = SegDiff(_config(name), "cpu")
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save(tmp_path / "m")
    loaded = SegDiff.load(tmp_path / "m", weights="raw")
    assert loaded.config.model == model.config.model
    image = torch.rand(3, 16, 16)
    assert torch.equal(model.predict(image, seed=1).prob, loaded.predict(image, seed=1).prob)


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_exact_resume(name, tiny_data, tmp_path):
    kw = {"val_every": 0, "save_every": 1}
    train(tiny_data, tmp_path / "full", _config(name, max_steps=2, **kw), device="cpu", progress=False)
    train(tiny_data, tmp_path / "part", _config(name, max_steps=1, **kw), device="cpu", progress=False)
    resumed = train(
        tiny_data, tmp_path / "part", _config(name, max_steps=2, **kw), resume=True, device="cpu", progress=False
    )
    assert resumed["step"] == 2
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ablation_args(data, out, *extra):
    return [
        "ablation", "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "2",
        "--generations", "2", "--sampling-steps", "2", "--device", "cpu", "--quiet", "--figure-images", "2",
        "--set", "data.size=16", "model.channel_mult=1,2", "model.model_channels=16", "model.rrdb_nf=8",
        "model.rrdb_gc=4", "train.batch_size=4", "train.val_every=0", "train.save_every=1", "train.log_every=1",
        *extra,
    ]  # fmt: skip


def test_ablation_command_end_to_end_and_continues(tiny_data, tmp_path, monkeypatch, capsys):
    import segdiff.train.loop as loop
    from segdiff.cli import main

    out = tmp_path / "abl"
    assert main(_ablation_args(tiny_data, out, "--variants", "full,no-encoder", "--T", "5")) == 0
    table = (out / "table4.md").read_text()
    assert "Full method (`full`)" in table and "Variant three (`no-encoder`)" in table and "T = 5" in table
    rows = (out / "table4.csv").read_text().splitlines()
    assert rows[0].startswith("variant,name,IoU,F1,WCov,FBound") and len(rows) == 4
    for name in ("fig7_variants.png", "fig9_T.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "fig8_rrdb.png").exists()  # no RRDB sweep asked for
    report = json.loads((out / "ablation.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["full", "no-encoder", "T5"]
    row = report["rows"][0]
    assert all(0 <= row[k] <= 1 for k in ("iou", "f1", "wcov", "boundf")) and row["train_steps"] == 2
    assert report["rows"][2]["T"] == 5 and json.loads((out / "variants/T5/run/config.json").read_text())[
        "diffusion"]["steps"] == 5  # fmt: skip
    assert json.loads((out / "variants/no-encoder/run/config.json").read_text())["model"]["conditioning"] == "image"

    # interrupted after no-encoder's training: its result and prediction are gone; rerun the same command
    (out / "variants/no-encoder/result.json").unlink()
    for f in (out / "variants/no-encoder/pred/masks").iterdir():
        f.unlink()
    calls = []
    real_train = loop.train
    monkeypatch.setattr(loop, "train", lambda *a, **k: calls.append(k.get("resume")) or real_train(*a, **k))
    assert main(_ablation_args(tiny_data, out, "--variants", "full,no-encoder", "--T", "5")) == 0
    assert calls == [True]  # only the unfinished variant, resumed from its checkpoint; the others kept
    again = json.loads((out / "ablation.json").read_text())["rows"]
    assert again[1]["iou"] == pytest.approx(report["rows"][1]["iou"])  # same weights, same noise keys

    # another protocol in the same folder is refused, naming what differs
    capsys.readouterr()
    assert main(_ablation_args(tiny_data, out, "--variants", "full", "--seed", "3")) != 0
    assert "seed" in capsys.readouterr().err


def test_ablation_refuses_bad_variants_before_any_work(tiny_data, tmp_path, capsys):
    from segdiff.cli import main

    assert main(_ablation_args(tiny_data, tmp_path / "a", "--variants", "full,inject5")) != 0
    assert "model.inject_after" in capsys.readouterr().err
    assert main(_ablation_args(tiny_data, tmp_path / "a", "--variants", "fulll")) != 0
    assert "unknown" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
