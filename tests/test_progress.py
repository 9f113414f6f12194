"""The progress hook of the sampling path: `on_step` is called once per network call, and
`SegDiff.network_calls` plans that number beforehand (segdiff serve's progress bar relies on both)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import tiny_config
from segdiff.api import SegDiff
from segdiff.config import apply_overrides


@pytest.mark.parametrize("mode", ["pad", "resize", "tile"])
@pytest.mark.parametrize("sampler", ["ddpm", "dpm++"])
def test_on_step_counts_every_network_call_and_network_calls_plans_them(mode, sampler):
    torch.manual_seed(0)
    model = SegDiff(tiny_config(T=10), device="cpu")
    image = torch.rand(2, 3, 32, 24)
    opts = model.sampling_options(
        generations=3, steps=4, batch_generations=4, sampler=sampler, mode=mode, tile_stride=8
    )
    calls = []
    out = model.predict(image, opts=opts, on_step=lambda: calls.append(1))
    assert len(calls) == model.network_calls(32, 24, 2, opts) > 0
    ref = model.predict(image, opts=opts)  # the hook does not change the result
    assert torch.equal(out.prob, ref.prob)


def test_network_calls_counts_windows_and_generation_chunks():
    model = SegDiff(tiny_config(T=10), device="cpu")  # window size 16
    opts = model.sampling_options(generations=5, steps=3, batch_generations=2, mode="tile", tile_stride=16)
    # 32 x 32 -> 4 windows, one per group (2 // 5 -> 1), 5 generations in chunks of 2 -> 3 calls per step
    assert model.network_calls(32, 32, 1, opts) == 4 * 3 * 3
    opts = model.sampling_options(opts, mode="pad")
    assert model.network_calls(32, 32, 2, opts) == 2 * 3 * 3
    model.config = apply_overrides(model.config, {"predict.sampling_steps": None})  # = T
    opts = model.sampling_options(generations=2, batch_generations=8)
    assert model.network_calls(16, 16, 6, opts) == 10 * 2  # 4 images of 2 generations per batch, all T steps


@pytest.mark.parametrize("mode", ["pad", "resize", "tile"])
def test_one_pass_model_reports_its_network_calls(mode):
    """A one-pass model calls the network once per image batch (or window group), whatever the generations
    and steps; on_step counts that call, so serve's progress bar does not stay at 0 of N."""
    cfg = tiny_config(T=10)
    model = SegDiff(replace(cfg, model=replace(cfg.model, prediction="onepass")), device="cpu")
    opts = model.sampling_options(generations=3, steps=4, batch_generations=4, mode=mode, tile_stride=8)
    calls = []
    model.predict(torch.rand(2, 3, 32, 24), opts=opts, on_step=lambda: calls.append(1))
    assert len(calls) == model.network_calls(32, 24, 2, opts) > 0
    # pad / resize: one call for both images; tile: 3 x 2 windows of 16 px at stride 8, one window per
    # group (batch_generations 4 // 3 generations), one call per group and image
    assert len(calls) == (1 if mode != "tile" else 2 * 6)
