"""Memory a prediction or training batch needs, estimated from the config and the input size before any
work starts, and the memory available to it.

The terms: activations (the skip connections the decoder keeps, the working tensors of a block), the
attention layers' working tensors and G(I). Attention runs on a fused `scaled_dot_product_attention`
kernel (q, k, v contiguous in their last dimension: segdiff.model.blocks.Attention), whose memory grows
with the positions L, not L^2 (measured on the CPU: 17 MB for one [4 heads, 22500 positions] call, where
the math kernel held 17.4 GB of scores). The estimate is checked against `available_bytes()`: CUDA free memory
(plus what PyTorch's allocator holds unused), or on the CPU MemAvailable of /proc/meminfo and the
cgroup limit; the environment variable SEGDIFF_MAX_MEMORY (e.g. "8G") lowers it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .config import RunConfig
from .errors import UserError
from .model import build_network, layout

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """ "8G", "512M", "1.5T", "1000000" -> bytes (binary units)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise UserError(f"SEGDIFF_MAX_MEMORY={text!r}: expected a size such as 8G or 512M") from None


def fmt(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MB"


def _cpu_available() -> int | None:
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None and hasattr(os, "sysconf"):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    try:  # a container's or job's own limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = int(limit) - used
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return avail


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this process on `device` (None when unknown), lowered by SEGDIFF_MAX_MEMORY."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        avail = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    elif device.type == "cpu":
        avail = _cpu_available()
    else:
        avail = None
    cap = os.environ.get("SEGDIFF_MAX_MEMORY", "").strip()
    if cap:
        avail = parse_bytes(cap) if avail is None else min(avail, parse_bytes(cap))
    return avail


def network_bytes(config: RunConfig, n: int, h: int, w: int, elem: int, train: bool = False) -> dict[str, float]:
    """Peak memory of one call of the noise predictor on n inputs of h x w (padded to the stride).

    The level layout is the model's own (segdiff.model.layout). Attention runs on a fused kernel, which
    never holds the [L, L] scores: an attention layer holds its [N, L, 3C] q, k, v, the heads' output and
    the projection's, and the kernel's per-thread blocks (a few MB), about 8 x N x C x L elements.
    """
    m = config.model
    lay = layout(m)

    def size(ds: int) -> int:
        return math.ceil(h / ds) * math.ceil(w / ds)

    positions = max(size(lv.ds) for lv in lay.attention)
    attention = max(8 * n * lv.channels * size(lv.ds) * elem for lv in lay.attention)
    act = [n * lv.channels * size(lv.ds) * elem for lv in lay.skips]
    kept = sum(act) * (2 if train else 1)  # the decoder's skips (training: and every block's input for backward)
    # a block's concatenation, norm, activation, convolution outputs, and the allocator's slack; measured
    # with attention on the fused kernel (CPU, tiny preset, pad, 128-512 px, 1 and 10 generations)
    working = 12 * max(act)
    if train:  # every attention layer's and every layer's outputs are kept for the backward pass
        attention *= len(lay.attention)
        working *= 2 * (m.num_res_blocks + 2) * len(m.channel_mult)
    return {"attention": attention, "activations": kept + working, "positions": positions}


def predict_bytes(config: RunConfig, n_images: int, n: int, h: int, w: int, device: torch.device) -> dict[str, float]:
    """One network call on n samples (n_images images x generations) of h x w, with G(I) of the images."""
    elem = 2 if torch.device(device).type == "cuda" else 4  # bf16 autocast on CUDA, fp32 on the CPU
    m = config.model
    net = network_bytes(config, n, h, w, elem)
    # G(I): its output for every image, and the dense blocks' growing concatenation while it runs
    cond = n_images * h * w * 4 * (m.model_channels + 2 * (m.rrdb_nf + 4 * m.rrdb_gc))
    params = _param_count(config) * 4
    # 15 % margin: measured peaks (CPU, tiny preset, pad, 128-512 px, 1 and 10 generations) came to 0.7-0.9 of it
    net["total"] = 1.15 * (net["attention"] + net["activations"] + cond) + params
    return net


_PARAMS: dict[str, int] = {}


def _param_count(config: RunConfig) -> int:
    key = repr((config.model, config.diffusion.steps))
    if key not in _PARAMS:  # built on "meta": shapes only, no memory
        _PARAMS[key] = sum(p.numel() for p in build_network(config, "meta").parameters())
    return _PARAMS[key]


def check_prediction(
    config: RunConfig,
    opts,
    shape: tuple[int, int],
    device: torch.device,
    network_batch: Callable[[Any], tuple[tuple[int, int], int, int]],
):
    """Refuse a prediction of an image of `shape` (H, W) that cannot fit (UserError with the estimate and the
    ways out), or lower opts.batch_generations until it fits (with a warning); returns the options to use.

    network_batch(opts) -> ((h, w), images, rows): one network call of the prediction under `opts`, as the
    predictor makes it (Predictor.network_batch: the input size after resizing, tiling or padding, the
    images or windows whose G(I) it holds, and its rows of images x generations)."""
    import dataclasses
    import warnings

    avail = available_bytes(device)
    if avail is None:
        return opts
    H, W = shape
    mode, size = opts.mode, config.data.size

    def need(bg: int) -> dict[str, float]:
        (h, w), images, rows = network_batch(dataclasses.replace(opts, batch_generations=bg))
        return predict_bytes(config, images, rows, h, w, device)

    est = need(opts.batch_generations)
    if est["total"] <= avail:
        return opts
    bg = opts.batch_generations
    while bg > 1 and need(bg)["total"] > avail:
        bg = max(1, bg // 2)
    if need(bg)["total"] <= avail:
        warnings.warn(
            f"predicting {H}x{W} in mode {mode!r} with {opts.batch_generations} generations per network batch needs "
            f"about {fmt(est['total'])}, more than the {fmt(avail)} available on {device}; using "
            f"--batch-generations {bg} ({fmt(need(bg)['total'])})",
            stacklevel=3,
        )
        return dataclasses.replace(opts, batch_generations=bg)
    one = need(1)
    ways = []
    if mode != "tile" and max(H, W) > size:
        ways.append(f"--mode tile (windows of the training size {size})")
    if mode == "pad":
        ways.append("--mode resize")
    ways.append("a smaller image" if mode != "resize" else "a smaller model")
    raise UserError(
        f"predicting a {W}x{H} image in mode {mode!r} needs about {fmt(one['total'])} even one generation at a "
        f"time (activations {fmt(one['activations'])}, attention over {int(one['positions'])} positions), more "
        f"than the {fmt(avail)} available on {device}; use {' or '.join(ways)}"
    )


def check_training(config: RunConfig, per_rank_batch: int, device: torch.device) -> None:
    """Refuse a training batch whose attention and weights alone (a lower bound) exceed the memory."""
    avail = available_bytes(device)
    if avail is None:
        return
    d = config.data
    size = d.augment.crop or d.size
    elem = 2 if torch.device(device).type == "cuda" else 4
    net = network_bytes(config, per_rank_batch, size, size, elem, train=True)
    weights = _param_count(config) * 4 * 5  # weights, gradients, 2 AdamW moments, EMA
    low = net["attention"] + weights
    if low > avail:
        raise UserError(
            f"training batches of {per_rank_batch} x {size}x{size} need at least {fmt(low)} (attention over "
            f"{int(net['positions'])} positions and the weights, gradients, optimizer and EMA), more than the "
            f"{fmt(avail)} available on {device}; use a smaller --batch-size (or more processes with torchrun)"
        )


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error or the CPU allocator's failure."""
    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc))
    )
