"""GPU checks for docs/reliability.md that the CPU-only test machine cannot make (not measured yet).

    PYTHONPATH=src python3 -m segdiff.bench.reliability_gpu [--device cuda] [--out reliability-gpu.json]

1. Memory estimate: peak CUDA memory of one prediction network batch (tiny preset, pad mode) at several
   sizes against segdiff.memory.predict_bytes (which assumes attention runs on SDPA's fused kernels, as
   on the CPU since issue 19: if CUDA fell back to the math kernel, the measured peak would far exceed the
   estimate at large sizes).
2. Cost of the per-step non-finite check: ms per training step (monuseg preset, batch 8 at 256 px) with
   the default check (a device flag, no host sync) and with skip_nonfinite (one host sync per step).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..atomic import atomic_write_text
from ..devices import synchronize
from ..errors import UserError
from .machine import bench_device


def memory_rows(device: torch.device) -> list[dict]:
    from ..api import SegDiff
    from ..memory import predict_bytes

    model = SegDiff("tiny", device)
    rows = []
    for size, gens in ((128, 10), (256, 4), (384, 2)):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        opts = model.sampling_options(generations=gens, steps=1, batch_generations=gens)
        model.predict_x0(torch.rand(3, size, size), opts=opts)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        est = predict_bytes(model.config, 1, gens, size, size, device)
        rows.append({"size": size, "generations": gens, "measured_bytes": peak, "estimate": est})
    return rows


def step_rows(device: torch.device, timed_steps: int = 30) -> list[dict]:
    """ms per optimizer step, averaged over `timed_steps` steps after 3 untimed ones."""
    from ..api import SegDiff
    from ..config import preset
    from ..train.ema import EMA
    from ..train.step import LossModule, train_step

    cfg = preset("monuseg")
    model = SegDiff(cfg, device)
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    ema = EMA(net, 0.9999)
    loss_mod = LossModule(net, model.schedule, model.config)
    n, s = 8, 256
    batch = (
        torch.rand(n, 3, s, s, device=device),
        torch.randint(0, 2, (n, 1, s, s), device=device).float() * 2 - 1,
        torch.randint(0, 100, (n,), device=device),
        torch.randn(n, 1, s, s, device=device),
    )
    rows = []
    for skip in (False, True):
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        for i in range(timed_steps + 3):
            if i == 3:
                synchronize(device)
                t0 = time.perf_counter()
            _, finite = train_step(loss_mod, net, opt, ema, batch, i, 1.0, torch.bfloat16, skip)
            if not skip:
                first_bad = torch.where((first_bad < 0) & ~finite, i, first_bad)
        synchronize(device)
        rows.append({"skip_nonfinite": skip, "ms_per_step": 1000 * (time.perf_counter() - t0) / timed_steps})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m segdiff.bench.reliability_gpu", description=__doc__.splitlines()[0])
    ap.add_argument("--device", help="a CUDA device (default: cuda when available)")
    ap.add_argument("--out", default="reliability-gpu.json")
    args = ap.parse_args(argv)
    device = bench_device(args.device)
    if device.type != "cuda":
        raise SystemExit("this script measures CUDA memory and timing; run it on a GPU")
    report = {
        "device": torch.cuda.get_device_name(device),
        "memory": memory_rows(device),
        "optimizer_steps": step_rows(device),
    }
    print(json.dumps(report, indent=2))
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
