"""`segdiff benchmark`: inference and training speed, the fast path against the reference path.

For each preset, at its training resolution, with random weights and a random image (speed does not
depend on the weights):

* seconds per image for the protocol (default the paper's: 30 generations x 100 DDPM steps), of the
  fast path (`sample_x0`: G(I) once, generations batched, bf16 autocast on a GPU) and of the reference
  path (`reference_sample_x0`: the authors' way, G(I) at every step, generations one after another, fp16
  on a GPU), measured in the same run, and their ratio. Both are timed on `timed_sampling_steps` of
  the protocol's sampling steps (and the reference on `reference_generations` of its generations) and scaled
  linearly to the protocol; the output says so whenever a number is scaled. Every step costs the same
  (respacing changes only the coefficients), and the reference runs generations one after another, so
  the scaling is linear; for the fast path it overcounts G(I), computed once per image, which makes the
  fast path look (slightly) slower, never faster.
* achieved TFLOP/s: FLOPs of one network forward (batch 1) and of one G(I), counted with
  torch.utils.flop_counter.FlopCounterMode, times the calls each path makes; and the fraction of a dense
  matmul peak measured on the same device in the same run (bf16 8192^3 on a GPU; fp32 on a CPU).
* peak memory: torch.cuda.max_memory_allocated on a GPU; on a CPU the process's peak resident set size
  (VmHWM, reset before each measurement where the kernel allows it).
* training throughput (samples/s): our training step (bf16 autocast and fused AdamW on CUDA, gradient
  clipping, EMA update) against a plain eager fp32 step (the same loss, backward, clipping, AdamW with
  PyTorch's default implementation and EMA), at the preset's batch size.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..config import PredictConfig, RunConfig, preset
from ..devices import synchronize
from ..predict import compiling
from ..predict.ensemble import sample_x0
from .machine import bench_device, environment
from .reference import reference_amp, reference_sample_x0

PRESETS = ("vaihingen", "monuseg", "cityscapes")

# fast-path variants: name -> PredictConfig overrides
VARIANT_FLAGS = {
    "channels_last": {"channels_last": True},
    "compile": {"compile": "default"},
    "compile-max-autotune": {"compile": "max-autotune"},
    "cudagraphs": {"compile": "reduce-overhead"},  # torch.compile with CUDA-graph capture
}


def variant_overrides(name: str) -> dict:
    """ "default", or flags joined by '+': "channels_last+cudagraphs"."""
    if name == "default":
        return {}
    out: dict = {}
    for part in name.split("+"):
        if part not in VARIANT_FLAGS:
            raise ValueError(f"unknown fast-path variant {part!r}: use default or {', '.join(VARIANT_FLAGS)}")
        out.update(VARIANT_FLAGS[part])
    return out


def first_compiled_mode(variants: list[str]) -> str | None:
    """The compile mode of the first compiled variant of `variants`, None when all are eager."""
    return next((m for m in (variant_overrides(v).get("compile") for v in variants) if m), None)


@dataclass
class Protocol:
    generations: int = PredictConfig.generations  # the paper's protocol: 30 generations x 100 = T DDPM steps
    sampling_steps: int = 100  # the sampling chain's length (--steps)
    sampler: str = PredictConfig.sampler
    variance: str = PredictConfig.variance
    timed_sampling_steps: int = 20  # sampling steps actually run per timed call (both paths); scaled to
    # sampling_steps (--measure-steps)
    reference_generations: int | None = None  # generations actually run by the reference (None = all)
    repeats: int = 3  # timed calls per path (median reported), after `warmup` untimed calls
    warmup: int = 1
    batch_generations: int | None = None  # None = the preset's predict.batch_generations
    variants: list[str] = field(default_factory=lambda: ["default"])
    reference_batched: bool = False  # also time the authors' way with generations batched
    reference: bool = True
    train_steps: int = 10  # timed optimizer steps per training mode (after train_warmup untimed ones)
    train_warmup: int = 3
    train: bool = True
    train_compile: bool = False  # also time the training step under torch.compile (and its compile time)
    matmul_n: int | None = None  # None: 8192 on CUDA, 1024 on CPU
    quick: bool = False
    compile_times: bool = False  # cold and warm compile in fresh processes (compile_probe)
    compile_cache: str | None = None  # cache folder of the compiled variants (None: a fresh one per run)
    preset_default: bool = True  # also seconds per image at the preset's own default protocol
    profile: str | None = None  # folder: torch.profiler summary of the first preset's sampling steps

    def batch_for(self, cfg: RunConfig) -> int:
        """Generations per network batch of the fast path: --batch-generations, else the preset's."""
        return self.batch_generations or cfg.predict.batch_generations


def _timed(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


class PeakMemory:
    """Peak memory of the code inside the block: CUDA allocator peak, or the process's peak RSS on a CPU."""

    def __init__(self, device: torch.device):
        self.device, self.bytes, self.kind = device, 0, ""

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            try:  # writing 5 to clear_refs resets VmHWM (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
                self.kind = "peak RSS of the process (VmHWM, reset before this measurement)"
            except OSError:
                self.kind = "peak RSS of the process since it started (VmHWM; could not reset)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = _vm_hwm()
        return False


def _vm_hwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, n: int | None = None, repeats: int = 5) -> dict:
    """Dense matmul throughput measured here: bf16 n^3 (n = 8192) on CUDA, fp32 (n = 1024) on a CPU."""
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    iters = 10 if cuda else 3
    times = _timed(lambda: [a @ b for _ in range(iters)], device, repeats, warmup=1)
    best = min(times) / iters

    return {
        "dtype": str(dtype).replace("torch.", ""),
        "n": n,
        "tflops": 2 * n**3 / best / 1e12,
        "note": f"best of {repeats} x {iters} matmuls {n}x{n} @ {n}x{n}",
    }


def _seeded_model(cfg: RunConfig, device: torch.device):
    """A SegDiff of `cfg` with random weights drawn from seed 0 (speed does not depend on the weights)."""
    from ..api import SegDiff

    torch.manual_seed(0)
    return SegDiff(cfg, device)


def _random_image(cfg: RunConfig, device: torch.device) -> torch.Tensor:
    s = cfg.data.size
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, cfg.model.image_channels, s, s, generator=g).to(device)


def _label(timed_sampling_steps: int, sampling_steps: int, measured_gens: int, gens: int) -> str:
    parts = []
    if timed_sampling_steps != sampling_steps:
        parts.append(f"{timed_sampling_steps} of {sampling_steps} steps")
    if measured_gens != gens:
        parts.append(f"{measured_gens} of {gens} generations")
    return "measured on " + ", ".join(parts) + ", scaled linearly" if parts else "measured at the full protocol"


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
            first_call = _timed(run, device, repeats=1, warmup=0)[0]
            warmup -= 1
        times = _timed(run, device, proto.repeats, warmup)
    flops = case.flops_g + G * Km * case.flops_net
    amp = "bf16" if device.type == "cuda" else "fp32"
    r = _timing(times, flops, K / Km, _label(Km, K, G, G), mem, amp, warmup)
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
        t = statistics.median(_timed(run, case.device, proto.repeats, 1))
        sec, how = t * Kp / km, _label(km, Kp, Gp, Gp) + " (its own batches)"
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
            times = _timed(run, case.device, proto.repeats, proto.warmup)
        flops = gm * Km * (case.flops_g + case.flops_net)
        amp = reference_amp(case.device)
        out[name] = _timing(times, flops, K / Km * G / gm, _label(Km, K, gm, G), mem, amp, proto.warmup)
    return out


def bench_inference(cfg: RunConfig, device: torch.device, proto: Protocol) -> dict:
    """Fast path(s) and reference path for one preset; returns a dict of results."""
    model = _seeded_model(cfg, device)
    net, sched = model.net.eval(), model.schedule
    image = _random_image(cfg, device)
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


def bench_training(cfg: RunConfig, device: torch.device, proto: Protocol, mode: str) -> dict:
    """Samples per second of one training step. mode "ours": train/loop.py's step (LossModule, bf16
    autocast on CUDA, gradient clipping, EMA update) with AdamW(fused=True) on CUDA; "plain": the same
    step in eager fp32 with PyTorch's default AdamW; "compiled": "ours" with the loss module under
    torch.compile (TrainConfig.compile = "default"), its first step (the compile) timed on its own.
    On a CPU "ours" and "plain" are the same fp32 step."""
    from ..train.ema import EMA
    from ..train.step import LossModule, train_step

    model = _seeded_model(cfg, device)
    net = model.net.train()
    tc = cfg.train
    cuda = device.type == "cuda"
    ours = mode in ("ours", "compiled")
    opt_kw = {"fused": True} if (ours and cuda) else {}
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, **opt_kw)
    ema = EMA(net, tc.ema_rate)
    loss_mod = LossModule(net, model.schedule, model.config)
    if mode == "compiled":
        loss_mod = torch.compile(loss_mod)
    n, s = tc.batch_size, cfg.data.size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(n, cfg.model.image_channels, s, s, generator=g).to(device)
    x0 = (torch.rand(n, 1, s, s, generator=g) > 0.5).float().mul(2).sub(1).to(device)
    t = torch.randint(len(model.schedule), (n,), generator=g).to(device)
    eps = torch.randn(n, 1, s, s, generator=g).to(device)
    amp = torch.bfloat16 if (ours and cuda) else None
    step = 0  # the optimizer step's number

    def optimizer_step():
        nonlocal step
        train_step(loss_mod, net, opt, ema, (image, x0, t, eps), step, tc.grad_clip, amp)
        step += 1

    def timed_steps():
        for _ in range(proto.train_steps):
            optimizer_step()

    with PeakMemory(device) as mem:
        first_s = _timed(optimizer_step, device, repeats=1, warmup=0)[0]  # includes the compile in mode "compiled"
        for _ in range(proto.train_warmup - 1):
            optimizer_step()
        seconds = _timed(timed_steps, device, repeats=1, warmup=0)[0]
    result = {
        "mode": mode,
        "batch_size": n,
        "optimizer_steps": proto.train_steps,
        "seconds": seconds,
        "samples_per_s": n * proto.train_steps / seconds,
        "amp": "bf16" if amp is not None else "fp32",
        "optimizer": "AdamW(fused=True)" if opt_kw else "AdamW (PyTorch default implementation)",
        "peak_memory_bytes": mem.bytes,
        "peak_memory_kind": mem.kind,
        "first_step_seconds": first_s,
    }
    if mode == "compiled":
        result["compile_seconds"] = first_s - seconds / proto.train_steps  # first step minus a compiled step
    if cuda:
        torch.cuda.empty_cache()
    return result


def compile_times(
    name: str, device: torch.device, rows: int, mode: str, folder: str, threads: int | None = None
) -> dict:
    """Cold and warm compile of preset `name`'s network in fresh processes (segdiff.bench.compile_probe):
    the first run fills the empty cache `folder`, the second finds it filled."""
    import segdiff

    env = dict(os.environ)
    src = str(Path(segdiff.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "segdiff.bench.compile_probe", "--preset", name, "--rows", str(rows)]
    cmd += ["--cache", folder, "--device", str(device), "--mode", mode]
    if threads:
        cmd += ["--threads", str(threads)]
    out: dict = {"cache_folder": folder, "mode": mode, "rows": rows}
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            out[label] = {"error": f"exit {proc.returncode}: {tail}", "process_wall_s": wall}
            break
        out[label] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall}
    return out


def auto_rule(res: dict, device: torch.device, proto: Protocol) -> dict:
    """What compile="auto" decides for this preset (its constants), and the same rule with this run's numbers."""
    G, K, bg = proto.generations, proto.sampling_steps, res["batch_generations"]
    calls = compiling.calls_for(1, G, bg, K)
    rows = res["rows_per_call"]
    est_call = rows * res["gflops_per_forward_without_G"] * 1e9 / (compiling.EAGER_TFLOPS * 1e12)

    def break_even(per_call: float, compile_s: float, speedup: float) -> int | None:
        gain = calls * per_call * (1 - 1 / speedup)
        return math.ceil(compile_s / gain) if gain > 0 else None

    one = compiling.auto_compile(device.type, calls, est_call)
    out = {
        "calls_per_image": calls,
        "rule": "compile <=> calls * seconds_per_call * (1 - 1/speedup) > compile_seconds (CUDA only)",
        "constants": {
            "compile_seconds": compiling.COMPILE_SECONDS,
            "speedup": compiling.SPEEDUP,
            "eager_tflops": compiling.EAGER_TFLOPS,
            "estimated_seconds_per_call": est_call,
        },
        "one_image_decision": one.mode,
        "one_image_reason": one.reason,
        "images_to_compile": break_even(est_call, compiling.COMPILE_SECONDS, compiling.SPEEDUP)
        if device.type == "cuda"
        else None,
    }
    eager = res["fast"].get("default")
    compiled = next((r for r in res["fast"].values() if r.get("compile", "off") != "off"), None)
    if eager and compiled:
        cold = res.get("compile_times", {}).get("cold", {}).get("compile_s")
        compile_s = cold if cold is not None else compiled.get("in_process_compile_seconds")
        speedup = eager["seconds_per_image"] / compiled["seconds_per_image"]
        per_call = eager["ms_per_call"] / 1000
        out["measured"] = {
            "seconds_per_call": per_call,
            "speedup": speedup,
            "compile_seconds": compile_s,
            "compile_seconds_from": "cold process" if cold is not None else "first call in this process",
            "images_to_compile": break_even(per_call, compile_s, speedup) if compile_s is not None else None,
        }
    return out


def profile_sampling(cfg: RunConfig, device: torch.device, proto: Protocol, folder: Path, rows: int = 25) -> dict:
    """torch.profiler over 2 sampling steps of one image (compiled with the first compiled variant's mode,
    after a warm-up call, else eager): the top kernels by device time, and which attention kernel SDPA runs.
    Writes profile.json and profile.txt (small) to `folder`."""
    from torch.profiler import ProfilerActivity, profile

    model = _seeded_model(cfg, device)
    net, sched, image = model.net.eval(), model.schedule, _random_image(cfg, device)
    mode = first_compiled_mode(proto.variants) or "off"
    bg = proto.batch_for(cfg)
    opts = PredictConfig(
        generations=proto.generations,
        sampling_steps=2,
        batch_generations=bg,
        compile=mode,
        compile_cache=proto.compile_cache,
    )
    sample_x0(net, sched, image, [0], opts)  # warm-up (and compile)
    synchronize(device)
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        sample_x0(net, sched, image, [0], opts)
        synchronize(device)
    events = prof.key_averages()

    def dev_time(e) -> float:  # microseconds; the attribute was renamed across torch versions
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            if cuda and hasattr(e, attr):
                return float(getattr(e, attr))
        return float(e.self_cpu_time_total)

    total = sum(dev_time(e) for e in events) or 1.0
    top = sorted(events, key=dev_time, reverse=True)[:rows]
    attention = [
        e
        for e in events
        if re.search(
            r"flash|fmha|efficient_attention|cudnn.*(attn|attention|sdpa|mha)|_sdpa|scaled_dot_product", e.key, re.I
        )
    ]
    # op and kernel names: aten::_scaled_dot_product_{flash,efficient,cudnn}_attention, _attention_math;
    # kernels flash_fwd_*, fmha_cutlassF_* (memory-efficient), cudnn_*sdpa* (cuDNN's names may also say flash)
    names = " ".join(e.key.lower() for e in attention)
    if "cudnn" in names:
        backend = "cudnn"
    elif "flash" in names:
        backend = "flash"
    elif "efficient" in names or "cutlassf" in names:
        backend = "efficient"
    elif "math" in names:
        backend = "math"
    else:
        backend = "none seen" if not names else "other"
    summary = {
        "preset": cfg.preset,
        "device": str(device),
        "compile": mode,
        "what": f"one image, {proto.generations} generations, 2 sampling steps (+ G(I)), {bg} per batch",
        "time_kind": "self device time" if cuda else "self CPU time",
        "total_us": total,
        "top": [{"name": e.key[:160], "us": dev_time(e), "share": dev_time(e) / total, "calls": e.count} for e in top],
        "attention_kernels": [{"name": e.key[:160], "us": dev_time(e), "calls": e.count} for e in attention],
        "sdpa_backend": backend,
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "profile.json", json.dumps(summary, indent=2) + "\n")
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    try:
        table = events.table(sort_by=sort_by, row_limit=rows, max_name_column_width=80)
    except (KeyError, AttributeError):  # the sort key was renamed
        table = events.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=80)
    atomic_write_text(folder / "profile.txt", f"SDPA backend seen: {backend}\n\n{table}\n")
    return summary


def run_benchmark(presets: list, device: torch.device, proto: Protocol, progress=print, on_preset=None) -> dict:
    """presets: names (or RunConfig objects, for tests). Returns the JSON-ready report; on_preset(report)
    is called after each preset (the CLI writes the report so far: a run cut short keeps its presets)."""
    report = {"environment": environment(device), "protocol": asdict(proto), "presets": []}
    progress(f"matmul peak on {report['environment']['device_name']} ...")
    report["matmul_peak"] = matmul_peak(device, proto.matmul_n)
    peak = report["matmul_peak"]["tflops"]
    mode = first_compiled_mode(proto.variants) or compiling.AUTO_MODE
    for item in presets:
        cfg = preset(item) if isinstance(item, str) else item
        name = cfg.preset
        times = None
        pproto = proto
        if proto.compile_times and isinstance(item, str):
            folder = tempfile.mkdtemp(prefix=f"segdiff-compile-{name}-", dir=proto.compile_cache)
            rows = compiling.chunk_rows(1, proto.generations, proto.batch_for(cfg))
            progress(f"{name}: compile cold and warm in fresh processes ({mode}, batch {rows}) ...")
            times = compile_times(name, device, rows, mode, folder, torch.get_num_threads())
            pproto = replace(proto, compile_cache=folder)  # the compiled variants below start warm
        progress(f"{name}: inference ({cfg.data.size}x{cfg.data.size}) ...")
        res = bench_inference(cfg, device, pproto)
        if times is not None:
            res["compile_times"] = times
        for kind in ("fast", "reference"):
            for r in res[kind].values():
                r["fraction_of_matmul_peak"] = r["tflops"] / peak
        res["auto"] = auto_rule(res, device, proto)
        if proto.train:
            progress(f"{name}: training step ...")
            modes = ("ours", "plain", "compiled") if proto.train_compile else ("ours", "plain")
            res["train"] = {m: bench_training(cfg, device, proto, m) for m in modes}
            res["train"]["speedup"] = res["train"]["ours"]["samples_per_s"] / res["train"]["plain"]["samples_per_s"]
            if proto.train_compile:
                res["train"]["compiled_vs_eager"] = (
                    res["train"]["compiled"]["samples_per_s"] / res["train"]["ours"]["samples_per_s"]
                )
        if proto.profile and not report.get("profile"):
            progress(f"{name}: torch.profiler summary ...")
            report["profile"] = profile_sampling(cfg, device, pproto, Path(proto.profile))
        report["presets"].append(res)
        if on_preset is not None:
            on_preset(report)
    return report


def format_report(report: dict) -> str:
    env, proto = report["environment"], report["protocol"]
    mp = report["matmul_peak"]
    lines = [
        f"device: {env['device_name']} ({env['device']}), torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}" if "cuda" in env else f", {env['cpu_threads']} CPU threads"),
        f"protocol: {proto['generations']} generations x {proto['sampling_steps']} steps, {proto['sampler']}"
        f" (variance {proto['variance']}); timed on {proto['timed_sampling_steps']} steps, median of"
        f" {proto['repeats']}"
        f" after {proto['warmup']} warm-up",
        f"matmul peak: {mp['tflops']:.2f} TFLOP/s ({mp['dtype']}, {mp['n']}^3)",
        "",
        f"{'preset':<11}{'path':<28}{'s/image':>10}{'vs ref':>8}{'TFLOP/s':>9}{'of peak':>9}{'peak mem':>11}  how",
    ]
    for res in report["presets"]:
        rows = [(f"fast:{k}", v) for k, v in res["fast"].items()]
        rows += [(f"reference:{k}", v) for k, v in res["reference"].items()]
        for name, r in rows:
            sp = r.get("speedup_vs_reference")
            lines.append(
                f"{res['preset']:<11}{name:<28}{r['seconds_per_image']:>10.3f}{(f'{sp:.1f}x' if sp else ''):>8}"
                f"{r['tflops']:>9.3f}{100 * r['fraction_of_matmul_peak']:>8.1f}%"
                f"{r['peak_memory_bytes'] / 2**20:>8.0f} MiB  {r['how']} ({r['amp']})"
            )
        per_call = ", ".join(f"{k} {v['ms_per_call']:.1f}" for k, v in res["fast"].items() if "ms_per_call" in v)
        if per_call:
            lines.append(f"{res['preset']:<11}ms per network call of {res['rows_per_call']} rows: {per_call}")
        if "preset_default" in res:
            d = res["preset_default"]
            lines.append(
                f"{res['preset']:<11}preset default ({d['generations']} generations x {d['sampling_steps']} steps): "
                f"{d['seconds_per_image_eager']:.3f} s/image eager ({d['how']})"
            )
        ct = res.get("compile_times")
        if ct:
            parts = []
            for label in ("cold", "warm"):
                c = ct.get(label)
                if c and "error" in c:
                    parts.append(f"{label}: {c['error']}")
                elif c:
                    parts.append(
                        f"{label} {c['compile_s']:.1f} s (process start to first compiled call done "
                        f"{c['start_to_first_call_done_s']:.1f} s)"
                    )
            lines.append(f"{res['preset']:<11}compile ({ct['mode']}, fresh processes): " + "; ".join(parts))
        if "auto" in res:
            a = res["auto"]
            text = f"compile=auto, 1 image: {a['one_image_decision']}"
            if a.get("images_to_compile"):
                text += f"; compiles from {a['images_to_compile']} images at this protocol"
            m = a.get("measured")
            if m and m.get("images_to_compile"):
                text += (
                    f"; with this run's numbers ({m['speedup']:.2f}x, {m['compile_seconds']:.0f} s compile): "
                    f"from {m['images_to_compile']} images"
                )
            lines.append(f"{res['preset']:<11}{text}")
        if "train" in res:
            tr = res["train"]
            lines.append(
                f"{res['preset']:<11}train samples/s: ours {tr['ours']['samples_per_s']:.2f} ({tr['ours']['amp']},"
                f" {tr['ours']['optimizer']}), plain fp32 {tr['plain']['samples_per_s']:.2f},"
                f" {tr['speedup']:.2f}x (batch {tr['ours']['batch_size']}, {tr['ours']['optimizer_steps']} steps)"
            )
            if "compiled" in tr:
                c = tr["compiled"]
                lines.append(
                    f"{res['preset']:<11}train samples/s: eager {tr['ours']['samples_per_s']:.2f}, torch.compile "
                    f"{c['samples_per_s']:.2f} ({tr['compiled_vs_eager']:.2f}x); "
                    f"compile time {c['compile_seconds']:.1f} s"
                )
    lines.append("")
    if env["device"].startswith("cpu") and any("train" in res for res in report["presets"]):
        lines.append("on a CPU both training modes run the same fp32 step (bf16 and fused AdamW are CUDA-only)")
    kinds = {r["peak_memory_kind"] for res in report["presets"] for r in res["fast"].values()}
    lines.append("peak memory: " + "; ".join(sorted(kinds)))
    if report.get("profile"):
        pr = report["profile"]
        top = ", ".join(f"{t['name'][:50]} {100 * t['share']:.0f}%" for t in pr["top"][:5])
        lines.append(f"profile ({pr['preset']}, compile {pr['compile']}): SDPA {pr['sdpa_backend']}; top: {top}")
    return "\n".join(lines)


def format_markdown(report: dict) -> str:
    """The GPU table of docs/results.md, one row per preset and fast-path variant."""

    def mem_gib(r: dict) -> str:
        return f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"

    env, mp = report["environment"], report["matmul_peak"]
    head = (
        f"{env['device_name']} ({env['device']}), torch {env['torch']}"
        + (
            f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}"
            if "cuda" in env
            else f", {env['cpu_threads']} threads"
        )
        + f"; matmul peak {mp['tflops']:.3g} TFLOP/s ({mp['dtype']}, measured in this run)"
    )
    proto = report["protocol"]
    lines = [
        head,
        "",
        f"| preset | path | ms / call (rows) | s / image {proto['generations']} x {proto['sampling_steps']} |"
        " s / image preset default (eager) | TFLOP/s | of peak | compile cold / warm (s) |"
        " warm start to first call (s) | peak memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in report["presets"]:
        ct = res.get("compile_times") or {}
        cold, warm = ct.get("cold") or {}, ct.get("warm") or {}
        d = res.get("preset_default")
        for k, r in res["fast"].items():
            compiled = r.get("compile", "off") != "off"
            cw = f"{cold['compile_s']:.0f} / {warm['compile_s']:.0f}" if compiled and "compile_s" in warm else ""
            start = f"{warm['start_to_first_call_done_s']:.1f}" if compiled and "compile_s" in warm else ""
            pd = f"{d['seconds_per_image_eager']:.2f}" if d and k == "default" else ""
            lines.append(
                f"| {res['preset']} | fast: {k} | {r['ms_per_call']:.1f} ({res['rows_per_call']}) |"
                f" {r['seconds_per_image']:.2f} | {pd} | {r['tflops']:.3g} |"
                f" {100 * r['fraction_of_matmul_peak']:.1f} % | {cw} | {start} | {mem_gib(r)} |"
            )
        for k, r in res["reference"].items():
            lines.append(
                f"| {res['preset']} | reference: {k} | | {r['seconds_per_image']:.2f} | | {r['tflops']:.3g} |"
                f" {100 * r['fraction_of_matmul_peak']:.1f} % | | | {r['peak_memory_bytes'] / 2**30:.2f} GiB |"
            )
    return "\n".join(lines) + "\n"


def protocol_from_args(args) -> Protocol:
    """The Protocol of `segdiff benchmark`'s flags (--quick: a smoke run), checked: a bad value is a
    UserError naming its flag."""
    from ..errors import UserError

    proto = Protocol(generations=args.generations, sampling_steps=args.steps, sampler=args.sampler)
    if args.quick:
        # a smoke run: every number is still measured and scaled the same way, on less work
        proto = replace(
            proto,
            timed_sampling_steps=2,
            reference_generations=3,
            repeats=1,
            warmup=1,
            train_steps=2,
            train_warmup=1,
            quick=True,
        )
    if args.measure_steps is not None:
        proto.timed_sampling_steps = args.measure_steps
    if args.repeats is not None:
        proto.repeats = args.repeats
    if args.train_steps is not None:
        proto.train_steps = args.train_steps
    if args.reference_generations is not None:
        proto.reference_generations = args.reference_generations
    proto.batch_generations = args.batch_generations
    proto.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    proto.compile_times = args.compile_times
    proto.compile_cache = args.compile_cache
    proto.profile = args.profile
    proto.reference_batched = args.reference_batched
    proto.reference = not args.no_reference
    proto.train = not args.no_train
    proto.train_compile = args.train_compile
    for v in proto.variants:
        try:
            variant_overrides(v)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    T = min(preset(p).diffusion.steps for p in _presets(args))
    checks = {
        "--generations": (proto.generations, proto.generations >= 1, "must be at least 1"),
        "--steps": (proto.sampling_steps, 1 <= proto.sampling_steps <= T, f"must be between 1 and T = {T}"),
        "--batch-generations": (args.batch_generations, (args.batch_generations or 1) >= 1, "must be at least 1"),
        "--repeats": (proto.repeats, proto.repeats >= 1, "must be at least 1"),
        "--train-steps": (proto.train_steps, proto.train_steps >= 1, "must be at least 1"),
        "--reference-generations": (
            proto.reference_generations,
            (proto.reference_generations or 1) >= 1,
            "must be at least 1",
        ),
    }
    for flag, (value, ok, problem) in checks.items():
        if not ok:
            raise UserError(f"{flag} {value}: {problem}")
    if not 1 <= proto.timed_sampling_steps <= proto.sampling_steps:
        raise UserError(
            f"--measure-steps {proto.timed_sampling_steps}: must be between 1 and --steps {proto.sampling_steps}"
        )
    return proto


def _presets(args) -> list[str]:
    return args.preset or (["tiny"] if args.quick else list(PRESETS))


def cli(args) -> int:
    """`segdiff benchmark` (arguments from segdiff.bench.add_parsers)."""
    device = bench_device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    proto = protocol_from_args(args)
    presets = _presets(args)
    if device.type == "cpu" and not args.quick and any(p != "tiny" for p in presets):
        print("note: paper presets on a CPU take a long time; --quick runs the tiny preset")

    def write(report: dict) -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
        if args.md:
            Path(args.md).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(args.md), format_markdown(report))

    report = run_benchmark(presets, device, proto, progress=lambda m: print(m, flush=True), on_preset=write)
    print(format_report(report))
    write(report)
    for flag, path in (("report", args.out), ("table", args.md)):
        if path:
            print(f"{flag}: {path}")
    return 0
