"""One run of the MoNuSeg benchmark: its arguments, folders, device, clock and phase times, and the train and
predict phases that the SegDiff pipeline and the one-pass baseline share."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...api import SegDiff
from ...atomic import atomic_write_text
from ...config import RunConfig
from ...errors import UserError
from ...metrics.evaluate import evaluate_dirs
from ...predict.run import predict_folder
from ...train.logging import RunLog
from ...train.loop import train
from ..machine import bench_device

RESERVE_S = 30.0  # evaluation, figures and writing after prediction


def log(msg: str) -> None:
    print(f"[monuseg {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Phases:
    """Wall seconds of each phase, in order."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *a, **kw):
        t0 = time.time()
        try:
            return fn(*a, **kw)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.time() - t0
            log(f"phase {name}: {self.seconds[name]:.1f} s")


@dataclass
class Bench:
    """One run of the benchmark: its arguments, folders, device, clock and phase times."""

    args: argparse.Namespace
    device: torch.device
    t_start: float = field(default_factory=time.time)
    phases: Phases = field(default_factory=Phases)

    @property
    def out(self) -> Path:
        return self.args.out

    @property
    def view(self) -> Path:
        return self.args.out / "data"

    @property
    def budget_s(self) -> float:
        return self.args.budget_minutes * 60

    def seconds_left(self) -> float:
        """Of the SegDiff pipeline's budget, after keeping RESERVE_S for evaluation and figures."""
        return self.budget_s - (time.time() - self.t_start) - RESERVE_S


def write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def start(args) -> Bench:
    """The output folder (a former run's results replaced only with --overwrite), threads and device."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    old = [out / p for p in ("run", "pred", "metrics", "baseline", "results.json") if (out / p).exists()]
    if old and not args.overwrite:
        raise UserError(
            f"{out}: holds a former run ({', '.join(p.name for p in old)}); pass --overwrite or choose another --out"
        )
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = bench_device(args.device, "cpu" if args.tiny else None)
    if not args.tiny and device.type != "cuda":
        log("WARNING: the full benchmark on a CPU takes days; use --tiny for a pipeline check")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Bench(args, device)


@dataclass
class Trained:
    """A run trained by one of the benchmark's methods, loaded with its best weights."""

    summary: dict  # train()'s summary
    cfg: RunConfig  # as written to run/config.json (with the max_steps the budget was turned into)
    rows: list[dict]  # the run's metrics.jsonl
    model: SegDiff


def train_phase(bench: Bench, name: str, cfg: RunConfig, run_dir: Path) -> Trained:
    """Phase `name`: train `cfg` on the data view into run_dir, then load its best weights."""
    summary = bench.phases.run(
        name, train, bench.view, run_dir, cfg, device=str(bench.device), progress=not bench.args.quiet
    )
    cfg = RunConfig.load(run_dir / "config.json")
    rows = RunLog(run_dir, enabled=False).rows()
    model = SegDiff.load(run_dir, weights="best", device=bench.device)
    return Trained(summary, cfg, rows, model)


def predict_phase(bench: Bench, prefix: str, model: SegDiff, folder: Path, **sampling) -> tuple[dict, dict]:
    """Phases `prefix`predict and `prefix`evaluate: the test split by the quadrant protocol into folder/pred
    (`sampling`: predict_folder's sampling overrides), scored into folder/metrics. Returns (the prediction's
    summary, the evaluation's scores)."""
    pred = bench.phases.run(
        prefix + "predict",
        predict_folder,
        model,
        bench.view / "test" / "images",
        folder / "pred",
        batch_images=1,
        overwrite=True,
        progress=not bench.args.quiet,
        seed=bench.args.seed,
        **sampling,
    )
    scores = bench.phases.run(
        prefix + "evaluate",
        evaluate_dirs,
        folder / "pred",
        bench.view / "test",
        out=folder / "metrics" / "summary.json",
    )
    return pred, scores
