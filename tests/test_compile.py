"""compile="auto": the rule, its plumbing into predict / study / validation, padded batches, the cache folder.

Padding is checked in eager mode (prepare_net patched to return the network itself, so the padded code
path runs without compiling): CPU kernels round differently for different batch sizes, so a kept
generation is compared bitwise with the same generation computed in a batch of the same shape.
One real (tiny) torch.compile checks the cache folder and that nothing recompiles in a padded run.
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from conftest import make_dataset, tiny_config
from segdiff.api import SegDiff
from segdiff.bench.reference import reference_sample_x0
from segdiff.config import PredictConfig
from segdiff.diffusion import make_schedule
from segdiff.predict import compiling, ensemble
from segdiff.predict.ensemble import sample_x0

T = 100


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    from segdiff.model import SegDiffUNet

    net = SegDiffUNet(tiny_config(T).model, num_timesteps=T)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    return net.eval(), make_schedule(T), torch.randn(3, 3, 16, 16, generator=g)


@pytest.fixture
def eager_padding(monkeypatch):
    """compile != "off" takes the padded path, but the network runs eager; records what prepare_net got."""
    seen = []

    def fake(net, opts):
        seen.append((net, opts.compile))
        return net

    monkeypatch.setattr(ensemble, "prepare_net", fake)
    return seen


# -- the rule ---------------------------------------------------------------------------------------


def test_auto_rule_compiles_on_cuda_only_when_the_saving_repays_the_compile_time():
    assert compiling.auto_compile("cpu", 10**9, 10.0).mode == "off"  # CPU: always eager
    per_call = 15.8 / 100  # the H200 eager vaihingen call (30 generations, 256 x 256)
    one_image = compiling.auto_compile("cuda", 100, per_call)
    assert one_image.mode == "off" and one_image.eager_seconds == pytest.approx(15.8)
    # break-even: calls * t * (1 - 1 / 2.4) = 60 s  ->  about 6.5 images of 100 calls
    assert compiling.auto_compile("cuda", 600, per_call).mode == "off"
    seven = compiling.auto_compile("cuda", 700, per_call)
    assert seven.mode == compiling.AUTO_MODE == "default"
    assert seven.saved_seconds == pytest.approx(700 * per_call * (1 - 1 / 2.4))
    assert compiling.auto_compile("cuda", 700, per_call, compile_seconds=100).mode == "off"
    assert compiling.auto_compile("cuda", 700, per_call, speedup=1.0).mode == "off"  # no gain, no compile


def test_network_calls_and_padded_batch_rows():
    # generations split over batches: ceil(G / bg) calls per image and step; a full batch has bg rows
    assert compiling.calls_for(items=3, generations=30, batch_generations=16, sampling_steps=100) == 3 * 2 * 100
    assert compiling.chunk_rows(images=3, generations=30, batch_generations=16) == 16
    # whole images per batch: bg // G images per call
    assert compiling.calls_for(items=16, generations=4, batch_generations=30, sampling_steps=5) == 3 * 5
    assert compiling.chunk_rows(images=16, generations=4, batch_generations=30) == 28
    assert compiling.chunk_rows(images=1, generations=4, batch_generations=30) == 4  # one image: no padding waste


def test_auto_resolves_to_eager_on_cpu_and_gives_the_eager_result_bitwise(setup):
    net, sched, image = setup
    assert PredictConfig().compile == "auto"
    model = SegDiff(tiny_config(T), "cpu")
    assert model.resolve_compile(model.sampling_options(), [(16, 16)] * 1000, repeats=100).compile == "off"
    assert "cpu" in model.compile_decision.reason
    auto = sample_x0(net, sched, image, [0, 1, 2], PredictConfig(generations=3, sampling_steps=3))
    off = sample_x0(net, sched, image, [0, 1, 2], PredictConfig(generations=3, sampling_steps=3, compile="off"))
    torch.testing.assert_close(auto, off, rtol=0, atol=0)
    assert not hasattr(net, "_segdiff_compiled") or not net._segdiff_compiled  # nothing was compiled


def test_decide_feeds_the_rule_with_calls_and_flops(monkeypatch):
    monkeypatch.setattr(compiling, "flops_per_sample", lambda net, size, device: 557e9)  # vaihingen, 256 x 256
    opts = PredictConfig(generations=30, sampling_steps=100, batch_generations=30)
    cuda = torch.device("cuda")
    one = compiling.decide(None, opts, cuda, [((256, 256), 1)], 100)
    assert one.mode == "off" and one.calls == 100
    assert one.eager_seconds == pytest.approx(100 * 30 * 557e9 / 106e12)  # the 15.8 s per image
    assert compiling.decide(None, opts, cuda, [((256, 256), 10)], 100).mode == "default"
    assert compiling.decide(None, opts, cuda, [((256, 256), 3), ((512, 512), 3)], 100).calls == 600
    explicit = PredictConfig(compile="max-autotune")
    assert compiling.decide(None, explicit, torch.device("cpu"), [], 1).mode == "max-autotune"


def test_flops_are_counted_once_per_shape_without_touching_the_rng(setup):
    net = copy.deepcopy(setup[0]).train()
    state = torch.get_rng_state()
    flops = compiling.flops_per_sample(net, (16, 16), torch.device("cpu"))
    assert flops > 0 and net._segdiff_flops[((16, 16), "cpu")] == flops
    assert net.training and torch.equal(torch.get_rng_state(), state)
    assert compiling.flops_per_sample(net, (32, 32), torch.device("cpu")) > 3 * flops


# -- padding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_padded_last_chunk_keeps_every_generation_bitwise(setup, eager_padding, sampler):
    net, sched, image = setup
    kw = dict(sampling_steps=4, sampler=sampler, eta=0.5 if sampler == "ddim" else 0.0)
    # generations split 2 + 2 + 1: the last chunk is padded to 2 rows; generation 4 is computed next to a
    # padding row instead of generation 5, in the same batch shape
    padded = sample_x0(
        net, sched, image, [0, 1, 2], PredictConfig(generations=5, batch_generations=2, compile="default", **kw)
    )
    six = sample_x0(
        net, sched, image, [0, 1, 2], PredictConfig(generations=6, batch_generations=2, compile="off", **kw)
    )
    torch.testing.assert_close(padded, six[:, :5], rtol=0, atol=0)
    # whole images per batch (2 images x 2 generations): the third image is padded with a copy of its G(I)
    padded = sample_x0(
        net, sched, image, [0, 1, 2], PredictConfig(generations=2, batch_generations=4, compile="default", **kw)
    )
    four_images = torch.cat([image, image[:1]])
    eager = PredictConfig(generations=2, batch_generations=4, compile="off", **kw)
    four = sample_x0(net, sched, four_images, [0, 1, 2, 9], eager)
    torch.testing.assert_close(padded, four[:3], rtol=0, atol=0)
    assert [c for _, c in eager_padding] == ["default", "off", "default", "off"]


def test_padded_fast_path_equals_reference(setup, eager_padding):
    net, sched, image = setup
    opts = PredictConfig(generations=3, sampling_steps=4, batch_generations=2, compile="default")
    fast = sample_x0(net, sched, image[:2], ["a", 7], opts)
    ref = reference_sample_x0(net, sched, image[:2], ["a", 7], replace_compile(opts))
    torch.testing.assert_close(fast, ref, rtol=0, atol=2e-4)  # tests/test_fast_path.py's ATOL_LAYOUT


def replace_compile(opts):
    from dataclasses import replace

    return replace(opts, compile="off")


class ShapeLog(torch.nn.Module):
    """Records the batch shapes the noise predictor sees."""

    def __init__(self, net):
        super().__init__()
        self.net, self.shapes = net, []

    def encode_image(self, image):
        return self.net.encode_image(image)

    def forward(self, x, t, cond):
        self.shapes.append((x.shape[0], cond.shape[0]))
        return self.net(x, t, cond)


def test_one_network_shape_per_run_for_tiles_and_last_batches(setup, eager_padding, monkeypatch, tmp_path):
    net = setup[0]
    cfg = tiny_config(T)
    model = SegDiff(cfg, "cpu")
    model.net.load_state_dict(net.state_dict())
    log = ShapeLog(model.net)
    model.net = log
    forced = compiling.CompileDecision("default", "test")
    monkeypatch.setattr(compiling, "decide", lambda *a, **k: forced)
    # tiles: a 16 x 40 image has 3 windows of 16, grouped 2 + 1 (G = 2, bg = 4): both calls use 4 rows
    opts = model.sampling_options(generations=2, steps=2, batch_generations=4, mode="tile")
    model.predict(torch.rand(1, 3, 16, 40), opts=opts)
    assert set(log.shapes) == {(4, 2)}
    # a folder of 3 images in batches of 2 (G = 2, bg = 4): the last batch of 1 image is padded to 2
    log.shapes.clear()
    data = make_dataset(tmp_path / "data", splits=(("test", 3),))
    from segdiff.predict.run import predict_folder

    opts = model.sampling_options(generations=2, steps=2, batch_generations=4, mode="pad")
    summary = predict_folder(
        model, data / "test" / "images", tmp_path / "pred", batch_images=2, progress=False, opts=opts
    )
    assert set(log.shapes) == {(4, 2)} and summary["predicted"] == 3
    assert summary["protocol"]["compile"] == "default" and summary["compile_reason"] == "test"


# -- plumbing -----------------------------------------------------------------------------------------


def test_study_and_validation_resolve_auto_once_and_validation_compiles_one_shared_network(monkeypatch, tmp_path):
    """decide() forced to compile: study and validation pass the mode on; training validates raw and EMA
    weights with one shared network (compiled once) that gets their weights copied in."""
    from segdiff.bench.study import run_study
    from segdiff.train.loop import train

    seen = []
    real_prepare = ensemble.prepare_net

    def fake(net, opts):
        seen.append((id(net), opts.compile))
        return real_prepare(net, replace_compile(opts))

    calls = []

    def forced(net, opts, device, work, steps):
        calls.append((work, steps))
        return compiling.CompileDecision("default", "forced by the test")

    monkeypatch.setattr(ensemble, "prepare_net", fake)
    monkeypatch.setattr(compiling, "decide", forced)
    data = make_dataset(tmp_path / "data", splits=(("train", 6), ("val", 2)))
    out = train(data, tmp_path / "run", tiny_config(max_steps=4), device="cpu", progress=False)
    assert out["step"] == 4
    assert len(calls) == 1  # decided once for the whole run: 2 val images x (4 / 2 + 1) validations x raw/EMA
    assert calls[0] == ([((16, 16), 2 * 6)], 3)
    assert {c for _, c in seen} == {"default"} and len({n for n, _ in seen}) == 1  # one shared network
    assert "validation compiles (default): forced by the test" in (tmp_path / "run" / "log.txt").read_text()

    seen.clear()
    model = SegDiff.load(tmp_path / "run", device="cpu")
    report = run_study(
        model, data / "val", tmp_path / "study", generations=2, steps=[1, 2], samplers=["ddim"], progress=False
    )
    assert report["protocol"]["compile"] == "default" and {c for _, c in seen} == {"default"}
    assert calls[-1] == ([((16, 16), 2 * 3)], 1)  # 2 images x (1 + 2) steps, as one decision


def test_validation_with_a_shared_network_gives_the_same_scores(setup):
    from segdiff.predict.predictor import Predictor
    from segdiff.train.distributed import DistInfo
    from segdiff.train.validation import validate, validation_options

    cfg = tiny_config(T)
    model = SegDiff(cfg, "cpu")
    model.net.load_state_dict(setup[0].state_dict())
    other = copy.deepcopy(model.net)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.9)
    pairs = [(torch.rand(3, 16, 16), (torch.rand(1, 16, 16) > 0.5).float()) for _ in range(2)]
    info = DistInfo()
    opts = validation_options(model.predictor, cfg, [(16, 16)] * len(pairs), 1)
    shared = copy.deepcopy(model.net)
    for net in (model.net, other):
        direct = validate(Predictor(cfg, net, "cpu"), pairs, info, opts)
        shared.load_state_dict(net.state_dict())  # as training does when validation compiles
        assert validate(Predictor(cfg, shared, "cpu"), pairs, info, opts) == direct


# -- cache folder ---------------------------------------------------------------------------------------


def test_cache_folder_setting_environment_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
    monkeypatch.setattr(compiling, "_USER_INDUCTOR_DIR", None)
    assert compiling.cache_dir() == compiling.Path("~/.cache/segdiff/inductor").expanduser()
    monkeypatch.setenv(compiling.CACHE_ENV, str(tmp_path / "env"))
    assert compiling.cache_dir() == tmp_path / "env"
    assert compiling.cache_dir(str(tmp_path / "setting")) == tmp_path / "setting"  # predict.compile_cache wins
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")
    folder = compiling.use_cache_dir(str(tmp_path / "setting"))
    assert folder.is_dir() and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    import torch._inductor.config as inductor_config

    assert inductor_config.fx_graph_cache and inductor_config.autotune_local_cache
    opts = PredictConfig().override({"compile_cache": str(tmp_path / "x")}, text=True)
    assert opts.compile_cache == str(tmp_path / "x")


class TinyEps(torch.nn.Module):
    """A noise predictor cheap enough to compile in a test."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Conv2d(1, 1, 1)

    def encode_image(self, image):
        return image[:, :1]

    def forward(self, x, t, cond):
        return self.w(x) * 0.5 + 0.001 * t.float().view(-1, 1, 1, 1)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor on a CPU needs a C++ compiler")
def test_compile_writes_to_the_cache_folder_and_padded_runs_do_not_recompile(monkeypatch, tmp_path):
    import torch._dynamo
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "old")))
    monkeypatch.setattr(inductor_config, "compile_threads", 1)
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # a second shape would raise
    torch._dynamo.reset()
    net, sched, image = TinyEps().eval(), make_schedule(10), torch.randn(1, 3, 8, 8)
    folder = tmp_path / "cache"
    opts = PredictConfig(
        generations=5, sampling_steps=3, batch_generations=2, compile="default", compile_cache=str(folder)
    )
    compiled = sample_x0(net, sched, image, [0], opts)  # chunks of 2, 2 and 1 (padded to 2) generations
    eager = sample_x0(net, sched, image, [0], replace_compile(opts))
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)
    assert (folder / "fxgraph").is_dir() and any((folder / "fxgraph").rglob("*"))
    torch._dynamo.reset()


# -- benchmark ----------------------------------------------------------------------------------------------


def test_benchmark_reports_per_call_time_preset_default_auto_rule_and_profile(tmp_path):
    from segdiff.bench.speed import Protocol, format_markdown, format_report, run_benchmark

    cfg = tiny_config(T)
    proto = Protocol(
        generations=2, sampling_steps=10, timed_sampling_steps=1, repeats=1, warmup=0, reference=False, train=False,
        matmul_n=64,
        profile=str(tmp_path / "profile"),
    )  # fmt: skip
    report = run_benchmark([cfg], torch.device("cpu"), proto, progress=lambda m: None)
    res = report["presets"][0]
    fast = res["fast"]["default"]
    assert fast["compile"] == "off" and res["rows_per_call"] == 2
    assert fast["ms_per_call"] == pytest.approx(1000 * fast["measured_seconds"])  # 1 call per step, 1 step
    d = res["preset_default"]  # the test config's own protocol: 2 generations x 3 steps, batches of 30
    assert (d["generations"], d["sampling_steps"]) == (2, 3) and d["seconds_per_image_eager"] > 0
    assert res["auto"]["one_image_decision"] == "off" and res["auto"]["calls_per_image"] == 10
    prof = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert prof["top"] and prof["sdpa_backend"] in ("flash", "math", "efficient", "cudnn", "other")
    assert "ms per network call" in format_report(report)
    assert "| test | fast: default |" in format_markdown(report)


@pytest.mark.slow
def test_compile_probe_runs_in_fresh_processes(tmp_path):
    from segdiff.bench.compile_probe import compile_times

    # mode "off": the probe's plumbing without a (slow) CPU compile
    out = compile_times("tiny", torch.device("cpu"), rows=2, mode="off", folder=str(tmp_path), threads=1)
    for label in ("cold", "warm"):
        r = out[label]
        assert "error" not in r, r
        assert r["preset"] == "tiny" and r["rows"] == 2 and r["first_call_s"] > 0
        assert r["start_to_first_call_done_s"] >= r["ready_s"] > 0 and r["process_wall_s"] > r["ready_s"]


def test_calls_for_counts_the_chunks_sample_x0_makes():
    """One formula for the number of network calls (compile decisions, progress bars): the chunks of
    generation_chunks, for every split of images x generations over the network batch."""
    from segdiff.predict.ensemble import generation_chunks

    for B in (1, 2, 3, 7):
        for G in (1, 2, 3, 8, 30):
            for bg in (1, 2, 4, 16, 30, 64):
                chunks = len(list(generation_chunks(B, G, bg)))
                assert compiling.calls_for(B, G, bg, 5) == 5 * chunks, (B, G, bg)
