"""The Predictor object: built from a run folder and named weights, it owns its network and device;
SegDiff is a facade over one; predict_folder takes either."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_dataset, tiny_config
from segdiff import Predictor, SegDiff
from segdiff.checkpoint import read_weights, state_dict_cpu, write_files
from segdiff.errors import CheckpointError, UserError
from segdiff.predict.run import predict_folder


def _perturbed(seed: int) -> SegDiff:
    torch.manual_seed(seed)
    model = SegDiff(tiny_config(), "cpu")
    with torch.no_grad():  # the output conv is zero-initialised: perturb so that outputs depend on the weights
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with three different sets of weights: raw, ema and best."""
    root = tmp_path_factory.mktemp("predictor")
    raw = _perturbed(0)
    raw.save(root / "run")
    write_files({root / "run" / "ema.safetensors": (state_dict_cpu(_perturbed(1).net), {"step": 1})})
    write_files({root / "run" / "best.safetensors": (state_dict_cpu(_perturbed(2).net), {"step": 1})})
    return root / "run"


OPTS = dict(generations=2, steps=3)


def test_from_run_loads_the_named_weights_and_owns_its_network(run):
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    probs = {}
    for weights, file in (("best", "best"), ("ema", "ema"), ("raw", "model")):
        p = Predictor.from_run(run, weights=weights, device="cpu")
        assert p.weights_file == run / f"{file}.safetensors" and p.device == torch.device("cpu")
        state, _ = read_weights(run / f"{file}.safetensors")
        assert all(torch.equal(v, state[k]) for k, v in p.net.state_dict().items())
        probs[weights] = p.predict(image, **OPTS).prob
        # the facade over the same weights predicts the same, bitwise
        assert torch.equal(SegDiff.load(run, weights=weights, device="cpu").predict(image, **OPTS).prob, probs[weights])
    assert not torch.equal(probs["ema"], probs["raw"]) and not torch.equal(probs["best"], probs["ema"])
    # two predictors of one run are independent: neither patches the other
    ema, raw = Predictor.from_run(run, "ema", "cpu"), Predictor.from_run(run, "raw", "cpu")
    assert ema.net is not raw.net
    assert torch.equal(ema.predict(image, **OPTS).prob, probs["ema"])


def test_a_predictor_over_weights_in_memory_and_the_facade_share_state(run):
    model = SegDiff.load(run, weights="raw", device="cpu")
    other = _perturbed(1).net
    direct = Predictor(model.config, other)  # device: the network's
    assert direct.device == torch.device("cpu") and direct.weights_file is None
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = model.predict(image, **OPTS).prob
    model.net = other  # the facade's attributes are its predictor's
    assert model.predictor.net is other
    assert torch.equal(model.predict(image, **OPTS).prob, direct.predict(image, **OPTS).prob)
    assert not torch.equal(before, direct.predict(image, **OPTS).prob)
    assert SegDiff.from_predictor(direct).net is other


def test_predict_folder_takes_a_predictor_or_the_facade(run, tmp_path):
    data = make_dataset(tmp_path / "data", splits=(("test", 2),))
    a = predict_folder(
        Predictor.from_run(run, "ema", "cpu"), data / "test" / "images", tmp_path / "a", progress=False, **OPTS
    )
    b = predict_folder(
        SegDiff.load(run, "ema", "cpu"), data / "test" / "images", tmp_path / "b", progress=False, **OPTS
    )
    assert a["weights"] == b["weights"] == str(run / "ema.safetensors")
    for stem in ("img00", "img01"):
        assert (tmp_path / "a" / "prob" / f"{stem}.tif").read_bytes() == (
            tmp_path / "b" / "prob" / f"{stem}.tif"
        ).read_bytes()
    assert json.loads((tmp_path / "a" / "predict.json").read_text())["predicted"] == 2


def test_weights_errors_name_the_run_and_the_file(run, tmp_path):
    with pytest.raises(UserError, match="weights='last': choose one of best, ema, raw"):
        Predictor.from_run(run, weights="last")
    with pytest.raises(CheckpointError, match="run folder not found"):
        Predictor.from_run(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"no weights \(ema.safetensors\)"):
        Predictor.from_run(empty, weights="ema")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((run / "config.json").read_text())
    (damaged / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes()[:100])
    (damaged / "ema.safetensors").write_bytes((run / "ema.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="best.safetensors"):  # no silent fall-back to ema
        Predictor.from_run(damaged, weights="best")
