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

The parts, one module each: `protocol` (what is measured, and the checks of the flags), `measure` (timer,
peak memory, FLOPs, matmul peak), `inference` (the fast and reference paths), `training` (the training
step), `profiler` (torch.profiler summary), `report` (the printed report and the Markdown table); the compile
times in fresh processes and the break-even rule of compile="auto" are in bench/compile_probe.py. This
module runs them: `run_benchmark` and the command `cli`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ...atomic import atomic_write_text
from ...config import preset
from ...predict import compiling
from ..compile_probe import auto_rule, compile_times
from ..machine import bench_device, environment
from .inference import bench_inference
from .measure import matmul_peak
from .profiler import profile_sampling
from .protocol import Protocol, first_compiled_mode, presets_of, protocol_from_args
from .report import format_markdown, format_report
from .training import bench_training

__all__ = [
    "Protocol",
    "bench_inference",
    "bench_training",
    "cli",
    "format_markdown",
    "format_report",
    "profile_sampling",
    "protocol_from_args",
    "run_benchmark",
]


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


def cli(args) -> int:
    """`segdiff benchmark` (arguments from segdiff.bench.add_parsers)."""
    device = bench_device(args.device)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    proto = protocol_from_args(args)
    presets = presets_of(args)
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
