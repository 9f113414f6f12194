"""torch.profiler over two sampling steps: the top kernels, and which attention kernel SDPA runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...atomic import atomic_write_text
from ...config import PredictConfig, RunConfig
from ...devices import synchronize
from ...predict.ensemble import sample_x0
from .measure import random_image, seeded_model
from .protocol import Protocol, first_compiled_mode


def profile_sampling(cfg: RunConfig, device: torch.device, proto: Protocol, folder: Path, rows: int = 25) -> dict:
    """torch.profiler over 2 sampling steps of one image (compiled with the first compiled variant's mode,
    after a warm-up call, else eager): the top kernels by device time, and which attention kernel SDPA runs.
    Writes profile.json and profile.txt (small) to `folder`."""
    from torch.profiler import ProfilerActivity, profile

    model = seeded_model(cfg, device)
    net, sched, image = model.net.eval(), model.schedule, random_image(cfg, device)
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
