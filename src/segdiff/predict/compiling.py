"""When and how the noise predictor is compiled: the `compile="auto"` rule, shape padding, the cache folder.

`predict.compile` is "auto" by default. "auto" runs eager on a CPU; on CUDA it compiles with
`AUTO_MODE` when the work ahead is long enough to repay the compile time (`auto_compile`, a pure
function of its inputs):

    compile  <=>  calls * seconds_per_call * (1 - 1 / SPEEDUP)  >  COMPILE_SECONDS

calls = network calls ahead (images x windows x ceil(generations / batch_generations) x sampling
steps), seconds_per_call = eager time of one call, estimated as its FLOPs (counted once per shape with
torch.utils.flop_counter on the device) / EAGER_TFLOPS. The constants are issue 10's H200 measurements
(torch 2.11, vaihingen 256 x 256, 30 generations x 100 steps): eager bf16 15.8 s per image (106
TFLOP/s), `torch.compile` default mode 6.6 s (2.4x), about 60 s to compile. At those numbers the
rule compiles from about 7 vaihingen images at 30 x 100 on.

While compiling, every network batch of a run has one shape (the last chunk of generations or windows
is padded with extra noise rows whose outputs are dropped), so nothing recompiles mid-run for one image
size. Compiled graphs are specialised per shape (`dynamic=False`): in `mode="pad"` each distinct image
size compiles once (up to torch._dynamo's recompile limit, 8 by default; sizes beyond it run eager).

Compiled kernels persist in a cache folder (`cache_dir`): a second process on the same GPU and
checkpoint loads them instead of compiling again.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

# The mode "auto" compiles with: the only one measured so far (issue 10, H200: 2.4x). Provisional: the
# CUDA-graph modes (reduce-overhead) did not finish measuring.
AUTO_MODE = "default"
COMPILE_SECONDS = 60.0  # measured: one cold compile of the vaihingen network on an H200 (torch 2.11)
SPEEDUP = 2.4  # measured: eager bf16 15.8 s -> compiled 6.6 s per image (H200, vaihingen, 30 x 100)
EAGER_TFLOPS = 106.0  # measured: eager bf16 fast path on the H200 (13.3 % of its 798 TFLOP/s bf16 peak)

CACHE_ENV = "SEGDIFF_CACHE_DIR"
_USER_INDUCTOR_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # set by the user before segdiff was imported


@dataclass(frozen=True)
class CompileDecision:
    mode: str  # the resolved mode: "off" or a torch.compile mode
    reason: str
    calls: int = 0
    eager_seconds: float = 0.0  # estimated eager time of the work ahead
    saved_seconds: float = 0.0  # estimated time compiling saves (before paying compile_seconds)


def auto_compile(
    device_type: str,
    calls: int,
    seconds_per_call: float,
    compile_seconds: float = COMPILE_SECONDS,
    speedup: float = SPEEDUP,
    mode: str = AUTO_MODE,
) -> CompileDecision:
    """The `compile="auto"` rule: compile on CUDA when the saving over the work ahead exceeds the compile time."""
    if device_type != "cuda":
        return CompileDecision("off", f"eager on {device_type}: auto compiles on CUDA only")
    eager = calls * seconds_per_call
    saved = eager * (1 - 1 / speedup)
    if saved > compile_seconds:
        why = f"saves ~{saved:.0f} s of ~{eager:.0f} s eager ({calls} calls) > {compile_seconds:.0f} s to compile"
        return CompileDecision(mode, why, calls, eager, saved)
    why = f"eager: would save ~{saved:.1f} s of ~{eager:.1f} s ({calls} calls) < {compile_seconds:.0f} s to compile"
    return CompileDecision("off", why, calls, eager, saved)


def calls_for(items: int, generations: int, batch_generations: int, sampling_steps: int) -> int:
    """Network calls for `items` images or windows of one shape, as sample_x0 chunks them (ensemble.generation_chunks),
    times `sampling_steps`; ensemble.network_calls counts with it too."""
    bg = max(1, batch_generations)
    if generations >= bg:
        return items * math.ceil(generations / bg) * sampling_steps
    return math.ceil(items / (bg // generations)) * sampling_steps


def chunk_rows(images: int, generations: int, batch_generations: int) -> int:
    """Rows of a full network batch when sample_x0 gets `images` images: the shape padded chunks take."""
    bg = max(1, batch_generations)
    if generations >= bg:
        return bg
    return min(bg // generations, max(1, images)) * generations


def flops_per_sample(net, size: tuple[int, int], device: torch.device) -> int:
    """FLOPs of one noise-predictor forward for one generation at `size` (H, W), counted once and cached on `net`."""
    cache = net.__dict__.setdefault("_segdiff_flops", {})
    key = (tuple(size), device.type)
    if key not in cache:
        from torch.utils.flop_counter import FlopCounterMode

        H, W = size
        channels = getattr(getattr(net, "cfg", None), "image_channels", 3)
        training = net.training
        net.eval()  # no dropout: counting draws no random numbers (a training run's RNG stream is unchanged)
        try:
            with torch.no_grad():
                cond = net.encode_image(torch.zeros(1, channels, H, W, device=device))
                x = torch.zeros(1, 1, H, W, device=device)
                t = torch.zeros(1, dtype=torch.long, device=device)
                with FlopCounterMode(display=False) as counter:
                    net(x, t, cond)
        finally:
            net.train(training)
        cache[key] = int(counter.get_total_flops())
    return cache[key]


def decide(
    net, opts, device: torch.device, work: list[tuple[tuple[int, int], int]], sampling_steps: int
) -> CompileDecision:
    """Resolve `opts.compile` for the work ahead: `work` = [((H, W) of a network input, images or windows)].

    Modes other than "auto" are returned as they are; "auto" applies `auto_compile` (no FLOP counting on a CPU).
    """
    if opts.compile != "auto":
        return CompileDecision(opts.compile, "set explicitly")
    if device.type != "cuda":
        return auto_compile(device.type, 0, 0.0)
    calls, seconds = 0, 0.0
    for size, items in work:
        n = calls_for(items, opts.generations, opts.batch_generations, sampling_steps)
        rows = chunk_rows(items, opts.generations, opts.batch_generations)
        calls += n
        seconds += n * rows * flops_per_sample(net, size, device) / (EAGER_TFLOPS * 1e12)
    return auto_compile(device.type, calls, seconds / max(calls, 1))


def cache_dir(setting: str | None = None) -> Path:
    """The folder of the persistent compile caches: `setting` (predict.compile_cache), else $SEGDIFF_CACHE_DIR,
    else a TORCHINDUCTOR_CACHE_DIR the user set, else ~/.cache/segdiff/inductor."""
    if setting:
        return Path(setting).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if _USER_INDUCTOR_DIR:
        return Path(_USER_INDUCTOR_DIR)
    return Path("~/.cache/segdiff/inductor").expanduser()


def use_cache_dir(setting: str | None = None) -> Path:
    """Point inductor's persistent caches (FX graph cache, autotuning results, Triton kernels) at
    `cache_dir(setting)` before compiling. Works with torch 2.11 and 2.13 (both read
    TORCHINDUCTOR_CACHE_DIR whenever they look up the cache)."""
    folder = cache_dir(setting).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    if previous is not None and previous != str(folder) and "TRITON_CACHE_DIR" in os.environ:
        # inductor put Triton's cache under the previous folder; follow the new one
        if os.environ["TRITON_CACHE_DIR"].startswith(previous):
            del os.environ["TRITON_CACHE_DIR"]
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        inductor_config.autotune_local_cache = True
        if previous is not None and previous != str(folder):
            from torch._inductor.utils import clear_caches

            clear_caches()  # in-memory caches that remember the previous folder
    except (ImportError, AttributeError):  # pragma: no cover - a torch without inductor
        pass
    return folder
