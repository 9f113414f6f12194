"""Settings in one place: --set / --config for any field, validation before work, explicit resume, and
run folders of the earlier config format (commit dde3913)."""

import json
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
import tifffile
import torch

from conftest import make_dataset, tiny_config
from segdiff.api import SegDiff
from segdiff.cli import main
from segdiff.config import ConfigError, PredictConfig, RunConfig, apply_overrides, preset
from segdiff.data.io import read_image
from segdiff.errors import UserError


def _config_cli(capsys, *args):
    assert main(["config", *args]) == 0
    return json.loads(capsys.readouterr().out)


def _error(capsys, *argv):
    """The CLI refuses with exit 2 and one line naming the problem (no traceback)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- --set: every field type, parsed and checked --------------------------------------------------------


@pytest.mark.parametrize(
    "assignment, path, value",
    [
        ("data.size=64", ("data", "size"), 64),  # int
        ("train.lr=2e-3", ("train", "lr"), 0.002),  # float
        ("train.ema_rate=1", ("train", "ema_rate"), 1.0),  # an integer for a float
        ("data.augment.hflip=false", ("data", "augment", "hflip"), False),  # bool, nested section
        ("data.augment.vflip=no", ("data", "augment", "vflip"), False),
        ("diffusion.schedule=paper", ("diffusion", "schedule"), "paper"),  # str
        ("model.channel_mult=1,2,2,4", ("model", "channel_mult"), [1, 2, 2, 4]),  # tuple[int, ...]
        ("data.augment.scale=(0.5,1.5)", ("data", "augment", "scale"), [0.5, 1.5]),  # tuple[float, float]
        ("train.max_minutes=none", ("train", "max_minutes"), None),  # None
        ("data.augment.crop=64", ("data", "augment", "crop"), 64),  # int | None, nested
        ("predict.sampling_steps=none", ("predict", "sampling_steps"), None),
        ("data.mean=0.5,0.5,0.5", ("data", "mean"), [0.5, 0.5, 0.5]),  # tuple | None
    ],
)
def test_set_parses_each_field_type(capsys, assignment, path, value):
    cfg = _config_cli(capsys, "--preset", "tiny", "--set", assignment)
    for p in path:
        cfg = cfg[p]
    assert cfg == value


def test_set_several_keys_and_the_result_is_a_complete_config(capsys):
    d = _config_cli(
        capsys, "--preset", "tiny", "--set", "data.size=64", "data.augment.crop=64", "model.model_channels=16"
    )
    assert (d["data"]["size"], d["data"]["augment"]["crop"], d["model"]["model_channels"]) == (64, 64, 16)
    full = RunConfig.from_dict(d).validate()
    assert full.train == preset("tiny").train and full.predict == preset("tiny").predict


@pytest.mark.parametrize(
    "assignment, fragments",
    [
        ("data.sise=64", ["data.sise", "did you mean data.size"]),
        ("data.channel_mult=1,2", ["did you mean model.channel_mult"]),
        ("data.predict_mode=tile", ["now predict.mode"]),  # an earlier key names its new place
        ("data.augment=1", ["is a section", "data.augment.crop"]),
        ("data.size=big", ["--set data.size=big", "expected an integer"]),
        ("train.lr=fast", ["expected a number"]),
        ("data.augment.hflip=maybe", ["expected true or false"]),
        ("model.channel_mult=1,x", ["expected integers"]),
        ("data.augment.scale=0.5", ["expected 2 numbers"]),
        ("train.batch_size=none", ["cannot be none"]),
        ("data.size", ["expected KEY=VALUE"]),
        ("train.budget_fixed_at=5", ["train.budget_fixed_at", "the run sets it", "cannot be set by hand"]),
        ("predict.steps=3", ["predict.steps", "now predict.sampling_steps"]),
    ],
)
def test_set_refuses_bad_keys_and_types(capsys, assignment, fragments):
    err = _error(capsys, "config", "--preset", "tiny", "--set", assignment)
    for f in fragments:
        assert f in err, err


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--set", "data.size=-32"], ["data.size=-32", "at least 1"]),
        (["--set", "data.size=30"], ["multiple of the network stride 4"]),
        (["--set", "data.augment.crop=0"], ["at least 1"]),
        (["--set", "data.augment.crop=30"], ["multiple of the network stride"]),
        (["--set", "train.batch_size=0"], ["train.batch_size=0", "at least 1"]),
        (["--set", "train.max_minutes=-1"], ["must be positive"]),
        (["--set", "train.val_sampling_steps=101"], ["between 1 and T = 100"]),
        (["--set", "model.num_heads=3"], ["must divide"]),
        (["--set", "diffusion.steps=0"], ["at least 1"]),
        (["--set", "diffusion.schedule=cosine"], ["choose one of scaled, paper"]),
        (["--set", "data.val_fraction=1.5"], ["[0, 1)"]),
        (["--set", "data.augment.scale=2,1"], ["MIN <= MAX"]),
        (["--set", "predict.generations=0"], ["at least 1"]),
        (["--set", "predict.sampling_steps=101"], ["at most T = 100"]),
        (["--set", "predict.sampler=euler"], ["choose one of ddpm, ddim, dpm++"]),
        (["--set", "predict.tile_stride=64"], ["between 1 and the window size data.size = 32"]),
    ],
)
def test_config_values_are_checked(capsys, args, fragments):
    err = _error(capsys, "config", "--preset", "tiny", *args)
    for f in fragments:
        assert f in err, err


def test_config_file_partial_over_a_preset_and_its_errors(capsys, tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"data": {"size": 64, "augment": {"crop": 64}}, "model": {"channel_mult": [1, 2]}}))
    d = _config_cli(capsys, "--preset", "tiny", "--config", str(f), "--set", "train.lr=0.01")
    assert d["data"]["size"] == 64 and d["model"]["channel_mult"] == [1, 2] and d["train"]["lr"] == 0.01
    assert d["model"]["model_channels"] == 32  # the rest is the preset's
    # a complete file written by `segdiff config` gives back the same config
    out = tmp_path / "full.json"
    assert main(["config", "--preset", "tiny", "--out", str(out)]) == 0
    assert RunConfig.load(out) == preset("tiny")
    f.write_text(json.dumps({"train": {"batch_size": "8"}}))
    assert "mine.json: train.batch_size = 8: expected an integer" in _error(capsys, "config", "--config", str(f))
    f.write_text(json.dumps({"model": {"chanel_mult": [1, 2]}}))
    assert "did you mean model.channel_mult" in _error(capsys, "config", "--config", str(f))
    f.write_text("{not json")
    assert "not valid JSON" in _error(capsys, "config", "--config", str(f))


def test_configs_are_frozen():
    """A config is never changed in place (a run, a preset and a caller share them): assigning a field fails,
    `dataclasses.replace` / `apply_overrides` make a new one."""
    cfg = preset("tiny-fast")
    for section, name, value in [(cfg, "preset", "x"), (cfg.train, "max_steps", 5), (cfg.data.augment, "crop", 8)]:
        with pytest.raises(FrozenInstanceError):
            setattr(section, name, value)
    assert cfg == preset("tiny-fast") and preset("tiny-fast").train.t_sampling == "high_noise"


def test_overrides_never_change_the_config_they_start_from():
    cfg = preset("tiny")
    new = apply_overrides(cfg, {"data.augment.crop": 64, "train.lr": 0.5})
    assert cfg == preset("tiny") and new.data.augment.crop == 64 and new.train.lr == 0.5
    model = SegDiff(tiny_config(), "cpu")
    opts = model.sampling_options(generations=5, steps=2, sampler="ddim", eta=0.3)
    assert (opts.generations, opts.sampling_steps, opts.eta) == (5, 2, 0.3)
    assert model.config == tiny_config()
    assert PredictConfig().steps_for(100) == 100


# -- predict: validation before any work, explicit options the sampler does not use -------------------


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg")
    torch.manual_seed(0)
    model = SegDiff(tiny_config(), "cpu")
    with torch.no_grad():  # the output conv is zero-initialised: perturb so that outputs depend on the weights
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save(root / "run")
    data = make_dataset(root / "data", splits=(("test", 2),))
    return root, data


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--generations", "0"], ["--generations 0: must be at least 1"]),
        (["--steps", "0"], ["--steps 0: must be at least 1"]),
        (["--steps", "11"], ["--steps 11: must be at most T = 10"]),
        (["--set", "sampler=euler"], ["--set sampler=euler", "choose one of"]),
        (["--sampler", "euler"], ["--sampler euler: choose one of ddpm, ddim, dpm++"]),
        (["--mode", "crop"], ["--mode crop: choose one of resize, tile, pad"]),
        (["--set", "steps=11"], ["--set steps=11: must be at most T = 10"]),
        (["--eta", "0.5"], ["--eta 0.5", "ddpm sampler does not use eta"]),
        (["--sampler", "dpm++", "--eta", "0"], ["dpm++ sampler does not use eta"]),
        (["--sampler", "ddim", "--variance", "small"], ["--variance small", "ddim sampler does not use variance"]),
        (["--set", "predict.sampler=dpm++", "variance=large"], ["does not use variance"]),
        (["--sampler", "ddim", "--eta", "-1"], ["--eta -1.0: must be at least 0"]),
        (["--mode", "tile", "--tile-stride", "0"], ["--tile-stride 0: must be between 1 and"]),
        (["--mode", "tile", "--tile-stride", "17"], ["--tile-stride 17", "window size data.size = 16"]),
        (["--set", "batch_generations=0"], ["at least 1"]),
        (["--set", "genrations=3"], ["did you mean predict.generations"]),
        (["--set", "clip_x0=perhaps"], ["expected true or false"]),
        (["--generations", "3", "--set", "generations=4"], ["given twice"]),
    ],
)
def test_predict_refuses_bad_values_before_work(capsys, run_folder, tmp_path, args, fragments):
    root, data = run_folder
    out = tmp_path / "pred"
    err = _error(capsys, "predict", "--checkpoint", str(root / "run"), "--input", str(data / "test" / "images"),
                 "--out", str(out), *args)  # fmt: skip
    for f in fragments:
        assert f in err, err
    assert not out.exists()  # refused before any work


def test_api_validates_too(run_folder):
    model = SegDiff.load(run_folder[0] / "run", device="cpu")
    image = torch.rand(1, 3, 16, 16)
    with pytest.raises(ConfigError, match="predict.generations = 0: must be at least 1"):
        model.predict(image, generations=0)
    with pytest.raises(ConfigError, match="predict.sampling_steps = 11: must be at most T = 10"):
        model.predict(image, steps=11)
    with pytest.raises(ConfigError, match="does not use eta"):
        model.predict(image, eta=0.5)
    with pytest.raises(ConfigError, match="data.size = 15"):
        SegDiff(replace(tiny_config(), data=replace(tiny_config().data, size=15)), "cpu")


def test_predict_set_options_are_used_and_recorded(run_folder, tmp_path):
    root, data = run_folder
    out = tmp_path / "p"
    argv = ["predict", "--checkpoint", str(root / "run"), "--input", str(data / "test" / "images"), "--out", str(out),
            "--set", "sampler=ddim", "predict.eta=0.5", "clip_x0=false", "--generations", "2", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    proto = json.loads((out / "predict.json").read_text())["protocol"]
    assert (proto["sampler"], proto["eta"], proto["clip_x0"], proto["generations"]) == ("ddim", 0.5, False, 2)
    assert proto["sampling_steps"] == 3  # the run's, resolved
    model = SegDiff.load(root / "run", device="cpu")
    image = read_image(data / "test" / "images" / "img00.png")
    ref = model.predict(image, keys=["img00"], generations=2, sampler="ddim", eta=0.5, clip_x0=False)
    assert np.allclose(
        tifffile.imread(out / "prob" / "img00.tif"), ref.prob[0].numpy(), atol=1e-4
    )  # batch of 2 vs 1: float order
    other = model.predict(image, keys=["img00"], generations=2)  # the run's own sampler: another result
    assert not np.allclose(other.prob[0].numpy(), ref.prob[0].numpy(), atol=1e-3)


# -- earlier run folders -------------------------------------------------------------------------------


def _old_format(cfg: RunConfig, variance: str, mode: str) -> dict:
    """config.json as commit dde3913 wrote it (variance/clip in diffusion, window options in data,
    predict.steps, train.val_steps)."""
    d = cfg.to_dict()
    p = d.pop("predict")
    d["train"]["val_steps"] = d["train"].pop("val_sampling_steps")
    d["diffusion"].update(variance=variance, clip_x0=p["clip_x0"])
    d["data"].update(predict_mode=mode, tile_stride=p["tile_stride"], tile_blend=p["blend"])
    d["predict"] = {
        "generations": p["generations"],
        "steps": p["sampling_steps"],
        "sampler": p["sampler"],
        "batch_generations": p["batch_generations"],
    }
    return d


def test_a_new_run_refuses_a_config_whose_budget_was_fixed_by_another_run(capsys, tmp_path):
    """train.budget_fixed_at is written by the run; a copied config.json with it would make a new run keep the
    other run's max_steps without measuring: refused by --set and by train --config."""
    d = tiny_config(budget_minutes=1.0, budget_fixed_at=7, max_steps=40).to_dict()
    (tmp_path / "c.json").write_text(json.dumps(d))
    argv = [
        "train",
        "--config",
        str(tmp_path / "c.json"),
        "--data",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "r"),
    ]
    err = _error(capsys, *argv)
    assert "train.budget_fixed_at = 7 is set by the run" in err and "null" in err
    assert not (tmp_path / "r").exists()


def test_a_config_json_that_says_predict_steps_loads_as_sampling_steps(tmp_path):
    """`predict.steps` was the field's earlier name: a saved config.json with it is migrated on load, and
    PredictConfig has one name for K (no `steps` attribute that reads the same field)."""
    d = tiny_config().to_dict()
    d["predict"]["steps"] = d["predict"].pop("sampling_steps")
    d["predict"]["steps"] = 4
    (tmp_path / "config.json").write_text(json.dumps(d))
    loaded = RunConfig.load(tmp_path / "config.json")
    assert loaded.predict.sampling_steps == 4 and loaded == replace(
        tiny_config(), predict=replace(tiny_config().predict, sampling_steps=4)
    )
    assert not hasattr(loaded.predict, "steps")
    d["predict"]["sampling_steps"] = 5  # both names, disagreeing: which one is meant is unknown
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="predict.steps .earlier name of predict.sampling_steps. and"):
        RunConfig.load(tmp_path / "config.json")


def test_old_format_run_folder_loads_and_predicts_the_same(run_folder, tmp_path, capsys):
    root, data = run_folder
    new = SegDiff.load(root / "run", device="cpu")
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "model.safetensors").write_bytes((root / "run" / "model.safetensors").read_bytes())
    (old_dir / "config.json").write_text(json.dumps(_old_format(new.config, "small", "pad"), indent=2))
    old = SegDiff.load(old_dir, device="cpu")
    p = old.config.predict
    assert (p.variance, p.mode, p.sampling_steps, p.generations, p.blend) == ("small", "pad", 3, 2, "uniform")
    assert old.config.train.val_sampling_steps == new.config.train.val_sampling_steps == 3  # train.val_steps
    image = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    a = old.predict(image)
    b = new.predict(image, variance="small")
    assert torch.equal(a.prob, b.prob) and torch.equal(a.uncertainty, b.uncertainty)
    assert not torch.equal(a.prob, new.predict(image).prob)  # the old file's variance is honoured
    # and through the CLI, with the old defaults
    assert main(["predict", "--checkpoint", str(old_dir), "--input", str(data / "test" / "images"),
                 "--out", str(tmp_path / "pred"), "--quiet"]) == 0  # fmt: skip
    proto = json.loads((tmp_path / "pred" / "predict.json").read_text())["protocol"]
    assert (proto["variance"], proto["mode"], proto["sampling_steps"]) == ("small", "pad", 3)
    # an old key and its new name that disagree are refused
    d = _old_format(new.config, "small", "pad")
    d["predict"]["variance"] = "large"
    (old_dir / "config.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="diffusion.variance .*predict.variance.* disagree"):
        SegDiff.load(old_dir, device="cpu")


# -- resume: refused and accepted changes ------------------------------------------------------------


def test_resume_refuses_fixed_settings_and_records_accepted_changes(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", splits=(("train", 4),))
    cfg_file = tmp_path / "test.json"
    tiny_config(max_steps=2, val_every=0, save_every=0, log_every=1).save(cfg_file)
    run = tmp_path / "run"
    base = ["train", "--data", str(data), "--out", str(run), "--quiet", "--device", "cpu"]
    assert main([*base, "--config", str(cfg_file), "--set", "train.batch_size=2", "--max-minutes", "60"]) == 0
    capsys.readouterr()
    before = (run / "model.safetensors").read_bytes()
    err = _error(capsys, *base, "--resume", "--lr", "0.01", "--set", "model.dropout=0.1", "data.augment.hflip=false")
    assert "train.lr 0.001 -> 0.01" in err and "model.dropout 0.0 -> 0.1" in err and "data.augment.hflip" in err
    assert "--resume" in err and "max_steps" in err  # names what may change
    assert "preset test -> tiny" in _error(capsys, *base, "--resume", "--preset", "tiny")
    assert "train.batch_size 2 -> 4" in _error(capsys, *base, "--resume", "--batch-size", "4")
    assert "train.seed" in _error(capsys, *base, "--resume", "--seed", "1")
    assert (run / "model.safetensors").read_bytes() == before  # nothing touched
    # length, cadence and budget may change: applied, written to config.json and log.txt
    assert main([*base, "--resume", "--max-steps", "3", "--val-every", "3", "--set", "train.log_every=3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    saved = RunConfig.load(run / "config.json")
    assert (saved.train.max_steps, saved.train.val_every, saved.train.log_every) == (3, 3, 3)
    assert saved.train.max_minutes == 60.0  # not given on resume: kept, not reset
    log = (run / "log.txt").read_text()
    assert "settings changed on resume: train.max_steps 2 -> 3, train.log_every 1 -> 3, train.val_every 0 -> 3" in log
    # the same values again are no change
    assert main([*base, "--resume", "--max-steps", "3", "--lr", "0.001"]) == 0
    assert "--resume" in _error(capsys, "train", "--data", str(data), "--out", str(tmp_path / "none"), "--resume")
    new_run = ["train", "--data", str(data), "--out", str(tmp_path / "new"), "--preset", "tiny"]
    assert "--preset huge: unknown preset" in _error(capsys, *new_run[:-1], "huge")
    assert "--schedule cosine: choose one of scaled, paper" in _error(capsys, *new_run, "--schedule", "cosine")
    assert "ddpm sampler does not use eta" in _error(capsys, *new_run, "--set", "predict.eta=0.5")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("key", ["data.mean", "data.std"])
def test_empty_normalisation_is_refused_with_its_key(key):
    cfg = preset("tiny")
    cfg = replace(cfg, data=replace(cfg.data, **{key[5:]: ()}))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg.validate()
