"""Each choice among names has one tuple (segdiff.config.choices): the code that implements it accepts every
name in it, and every parser that offers it (the CLI, the web page, the benchmarks) offers exactly it."""

from __future__ import annotations

import argparse

import pytest
import torch

from segdiff import config
from segdiff.cli import build_parser, choices
from segdiff.diffusion.gaussian import training_loss
from segdiff.diffusion.samplers import sample
from segdiff.diffusion.schedule import linear_betas, make_schedule, sample_timestep
from segdiff.model.embeddings import TimeEmbedding
from segdiff.rng import GenerationNoise, generator
from segdiff.train.schedule import learning_rate, should_compile


def _options(parser: argparse.ArgumentParser, *path: str) -> dict[str, argparse.Action]:
    """The options of the (sub)command `path` of `parser`, by their long flag."""
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _offered(action: argparse.Action) -> tuple:
    # a flag offers its choices through argparse's choices, or (checked by the config) its metavar
    return tuple(action.choices) if action.choices is not None else action.metavar


def test_the_cli_offers_each_tuple():
    p = build_parser()
    train, predict = _options(p, "train"), _options(p, "predict")
    assert _offered(train["--compile"]) == config.COMPILE_MODES
    assert _offered(train["--schedule"]) == choices(config.SCHEDULES)
    assert _offered(train["--preset"]) == choices(config.PRESETS)
    assert _offered(predict["--sampler"]) == choices(config.SAMPLERS)
    assert _offered(predict["--variance"]) == choices(config.VARIANCES)
    assert _offered(predict["--mode"]) == choices(config.PREDICT_MODES)
    assert _offered(predict["--blend"]) == choices(config.BLENDS)


def test_the_benchmarks_offer_each_tuple():
    from segdiff.bench import monuseg

    bench = _options(build_parser(), "benchmark")
    assert _offered(bench["--sampler"]) == config.SAMPLERS
    assert _offered(bench["--preset"]) == tuple(config.PRESETS)
    need = ["--data", "d", "--out", "o"]
    args = monuseg.parse_args([*need, "--compile", "max-autotune", "--sampler", "dpm++"])
    assert (args.compile, args.sampler) == ("max-autotune", "dpm++")  # every name of the tuples is offered
    with pytest.raises(SystemExit):
        monuseg.parse_args([*need, "--compile", "on"])


def test_the_web_page_offers_each_tuple():
    pytest.importorskip("starlette")
    from segdiff.serve import app

    # the page's sampler and variance menus are filled from these (the /api/info "samplers", "variances")
    assert app.SAMPLERS is config.SAMPLERS and app.VARIANCES is config.VARIANCES


def test_the_compile_tuple_spells_each_mode_once():
    for tup in (config.COMPILE_MODES, config.SAMPLERS, config.PREDICTIONS, config.LR_SCHEDULES):
        assert len(set(tup)) == len(tup)
    assert not hasattr(config, "TRAIN_COMPILE")  # training and prediction share COMPILE_MODES


def test_every_name_of_each_tuple_is_implemented():
    sched = make_schedule(10)
    noise = GenerationNoise([generator(0, 0)])
    x_T = noise.randn((1, 4, 4), "cpu")

    def eps_fn(x, t):
        return torch.zeros_like(x)

    for name in config.SAMPLERS:
        assert sample(name, eps_fn, x_T, sched, noise, 3).shape == x_T.shape
    for kind in config.VARIANCES:
        assert sched.variance(kind).shape == (10,)
    for kind in config.SCHEDULES:
        assert linear_betas(10, kind).shape == (10,)
    for kind in config.T_SAMPLINGS:
        assert 0 <= sample_timestep(10, kind, torch.Generator().manual_seed(0)) < 10
    for kind in config.TIME_EMBEDDINGS:
        assert TimeEmbedding(8, kind, 10)(torch.tensor([3])).shape[0] == 1
    for kind in config.LR_SCHEDULES:
        tc = config.TrainConfig(lr_schedule=kind, max_steps=10, lr_min=1e-5)
        assert 1e-5 <= learning_rate(tc, 9) <= tc.lr
    for mode in config.COMPILE_MODES:
        assert should_compile(mode, "cpu", None) in config.COMPILE_MODES
    model = lambda x, t, cond: torch.zeros_like(x)  # noqa: E731 - a network that outputs zeros, whatever it predicts
    x0, t = torch.ones(2, 1, 4, 4), torch.tensor([1, 5])
    for prediction in config.PREDICTIONS:
        loss = training_loss(model, x0, torch.zeros(2, 1, 4, 4), t, torch.randn_like(x0), sched, prediction)
        assert torch.isfinite(loss)
