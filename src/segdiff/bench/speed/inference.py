"""The inference benchmark of one preset: the fast path under each variant, the preset's own default
protocol, and the reference path (the authors' way), with FLOPs, TFLOP/s and peak memory."""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, replace

import torch

from ...config import PredictConfig, RunConfig
from ...predict import compiling
from ...predict.ensemble import sample_x0
from ..reference import reference_amp, reference_sample_x0
from .measure import PeakMemory, count_flops, random_image, scaling_label, seeded_model, timed
from .protocol import Protocol, variant_overrides


@dataclass
class _Case:
    """One preset's inference measurement: its network, a random image, the protocol's numbers and FLOPs."""

    net: torch.nn.Module
    sched: object
    image: torch.Tensor
    device: torch.device
    G: int  # generations of the protocol
    K: int  # its sampling steps
    Km: int  # the sampling steps timed per call (scaled to K)
    bg: int  # generations per network batch (fast path)
    base: PredictConfig  # the protocol at Km timed sampling steps, eager
    flops_net: int  # one network forward without G(I), batch 1
    flops_g: int  # G(I) of one image


def _timing(
    times: list[float], flops_measured: float, scale: float, label: str, mem: PeakMemory, amp: str, warmup: int
) -> dict:
    """One path's result: the median of the timed calls, scaled to the protocol, with its TFLOP/s and memory."""
    t = statistics.median(times)
    return {
        "seconds_per_image": t * scale,
        "measured_seconds": t,
        "measured_seconds_all": times,
        "warmup_calls": warmup,
        "scaled": scale != 1.0,
        "scale": scale,
        "how": label,
        "amp": amp,
        "tflops": flops_measured / t / 1e12,
        "peak_memory_bytes": mem.bytes,
        "peak_memory_kind": mem.kind,
    }


def _time_fast_variant(case: _Case, variant: str, proto: Protocol) -> dict:
    """The fast path (sample_x0) under one variant's speed flags; a compiled variant's first call is timed
    on its own (the compile, warm when the cache folder already holds it)."""
    device, G, K, Km = case.device, case.G, case.K, case.Km
    opts = replace(case.base, **variant_overrides(variant))
    vnet = case.net if variant == "default" else copy.deepcopy(case.net)  # channels_last converts in place
    run = lambda: sample_x0(vnet, case.sched, case.image, [0], opts)  # noqa: E731
    # a compiled variant compiles in its first call (timed on its own); CUDA-graph trees record in the next
    warmup = max(proto.warmup, 2) if opts.compile != "off" else proto.warmup
    first_call = None
    with PeakMemory(device) as mem:
        if opts.compile != "off":
            first_call = timed(run, device, repeats=1, warmup=0)[0]
            warmup -= 1
        times = timed(run, device, proto.repeats, warmup)
    flops = case.flops_g + G * Km * case.flops_net
    amp = "bf16" if device.type == "cuda" else "fp32"
    r = _timing(times, flops, K / Km, scaling_label(Km, K, G, G), mem, amp, warmup)
    # per network call of rows_per_call rows (G(I), once per image, is spread over the calls)
    calls_per_sampling_step = compiling.calls_for(1, G, case.bg, 1)  # network calls per sampling step, one image
    r["ms_per_call"] = 1000 * r["measured_seconds"] / (calls_per_sampling_step * Km)
    r["compile"] = opts.compile
    if first_call is not None:
        r["first_call_seconds"] = first_call
        r["in_process_compile_seconds"] = first_call - r["measured_seconds"]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return r


def _time_preset_default(case: _Case, cfg: RunConfig, proto: Protocol, eager: dict) -> dict:
    """Seconds per image at the preset's own default protocol (generations, sampling steps, batch): the
    eager per-call time when its network batches are the protocol's, else timed on its own batches."""
    p = cfg.predict
    Gp, Kp, bgp = p.generations, p.steps_for(cfg.diffusion.steps), p.batch_generations
    if (Gp, bgp) == (case.G, case.bg):
        sec = eager["ms_per_call"] / 1000 * compiling.calls_for(1, Gp, bgp, Kp)
        how = "per-call time of the protocol's batches (the same network batches)"
    else:
        km = min(case.Km, Kp)
        popts = replace(case.base, generations=Gp, sampling_steps=km, batch_generations=bgp)
        run = lambda: sample_x0(case.net, case.sched, case.image, [0], popts)  # noqa: E731
        t = statistics.median(timed(run, case.device, proto.repeats, 1))
        sec, how = t * Kp / km, scaling_label(km, Kp, Gp, Gp) + " (its own batches)"
    return {
        "generations": Gp,
        "sampling_steps": Kp,
        "batch_generations": bgp,
        "sampler": p.sampler,
        "seconds_per_image_eager": sec,
        "how": how,
    }


def _time_reference(case: _Case, proto: Protocol) -> dict:
    """The reference path, one generation after another (time is linear in the generations, so a subset may
    be scaled) and, with proto.reference_batched, generations batched (not linear in its batch: always all)."""
    G, K, Km = case.G, case.K, case.Km
    ways = [("sequential", False, min(proto.reference_generations or G, G))]
    if proto.reference_batched:
        ways.append(("batched", True, G))
    out = {}
    for name, batched, gm in ways:
        ref_opts = replace(case.base, generations=gm)

        def run(o=ref_opts, b=batched):
            return reference_sample_x0(case.net, case.sched, case.image, [0], o, batched=b)

        with PeakMemory(case.device) as mem:
            times = timed(run, case.device, proto.repeats, proto.warmup)
        flops = gm * Km * (case.flops_g + case.flops_net)
        amp = reference_amp(case.device)
        out[name] = _timing(times, flops, K / Km * G / gm, scaling_label(Km, K, gm, G), mem, amp, proto.warmup)
    return out


def bench_inference(cfg: RunConfig, device: torch.device, proto: Protocol) -> dict:
    """Fast path(s) and reference path for one preset; returns a dict of results."""
    model = seeded_model(cfg, device)
    net, sched = model.net.eval(), model.schedule
    image = random_image(cfg, device)
    G, K = proto.generations, proto.sampling_steps
    Km = min(proto.timed_sampling_steps, K)
    bg = proto.batch_for(cfg)
    base = PredictConfig(
        generations=G,
        sampling_steps=Km,
        sampler=proto.sampler,
        variance=proto.variance,
        batch_generations=bg,
        compile="off",  # the variant "default" is eager; compiled variants set compile
        compile_cache=proto.compile_cache,
    )

    # FLOPs of one network forward per generation (batch 1) and of G(I) for one image (counts do not
    # depend on the precision)
    s = cfg.data.size
    x1 = torch.randn(1, 1, s, s, device=device)
    t1 = torch.zeros(1, dtype=torch.long, device=device)
    with torch.no_grad():
        cond1 = net.encode_image(image)
        flops_net = count_flops(lambda: net(x1, t1, cond1))
        flops_g = count_flops(lambda: net.encode_image(image))
    case = _Case(net, sched, image, device, G, K, Km, bg, base, flops_net, flops_g)
    out: dict = {
        "preset": cfg.preset,
        "resolution": [s, s],
        "params": sum(p.numel() for p in net.parameters()),
        "params_G": sum(p.numel() for p in net.G.parameters()),
        "gflops_per_forward_without_G": flops_net / 1e9,
        "gflops_G_per_image": flops_g / 1e9,
        "batch_generations": bg,
        "rows_per_call": compiling.chunk_rows(1, G, bg),
        "fast": {variant: _time_fast_variant(case, variant, proto) for variant in proto.variants},
        "reference": {},
    }
    if proto.preset_default and "default" in out["fast"]:
        out["preset_default"] = _time_preset_default(case, cfg, proto, out["fast"]["default"])
    if proto.reference:
        out["reference"] = _time_reference(case, proto)
    ref = out["reference"].get("sequential")
    for res in out["fast"].values():
        if ref:
            res["speedup_vs_reference"] = ref["seconds_per_image"] / res["seconds_per_image"]
        if "batched" in out["reference"]:
            res["speedup_vs_reference_batched"] = (
                out["reference"]["batched"]["seconds_per_image"] / res["seconds_per_image"]
            )

    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out
