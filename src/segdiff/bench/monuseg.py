"""The MoNuSeg benchmark (issues 3, 9): one command that trains, chooses its sampling setting on the validation
images, predicts the 14 test images by the paper's quadrant protocol and evaluates, within a total time budget;
then a one-pass baseline at equal training minutes.

    PYTHONPATH=src python3 -m segdiff.bench.monuseg --data /path/to/monuseg --out OUT --budget-minutes 9
        [--preset monuseg-fast] [--train-fraction 0.65] [--generations G --steps K] [--no-baseline]
    PYTHONPATH=src python3 -m segdiff.bench.monuseg --data /path/to/monuseg --out OUT --tiny   # CPU pipeline check

The data folder is the layout of ../shared/data/monuseg (and of `segdiff prepare monuseg`):
DATA/{train,test}/{images,masks}/<stem>.<ext>, 30 train and 14 test images at 512 x 512.

What one run does, in order (results.json `phases_s` holds the wall seconds of each phase):
 1. data: OUT/data, a view of DATA made of symbolic links (nothing is copied): `val` holds --val-images of
    the 30 training images (a seeded draw), `train` the others, `test` the test split.
 2. train: the preset (default `monuseg-fast`: the paper's network with the short-budget recipe) for
    --train-fraction (0.65) of --budget-minutes (9): TrainConfig.budget_minutes, turned into a fixed
    number of steps after measuring the first steps (compile included), written to OUT/run/config.json.
    Validation at the end of training keeps the better of the raw and EMA weights.
 3. select: a grid of samplers (DDIM, DDPM) x sampling steps (1, 2, 5, 10, 25) x generations (1..16) on
    the validation images (full 512 x 512, the same quadrant protocol), cheapest first, within half of the
    time left; the choice (segdiff.bench.select.choose_setting): the cheapest setting within 0.5 IoU points
    of the grid's best whose estimated test time fits what is left. With --generations and --steps the
    grid is skipped.
 4. predict: the test split at 512 x 512 by four 256 x 256 windows (stride 256), G(I) and the generations
    per window, as the authors did (predict_mode "tile").
 5. evaluate, figures: segdiff.metrics.evaluate.evaluate_dirs (per-image Dice/F1 and IoU averaged over the
    images, as the paper's Table 3; pooled; BoundF; calibration), OUT/results.json (written atomically),
    curves.png, selection.png (validation IoU against estimated test time), figure.png, reliability.png.
 6. baseline_*: the same network trained as a one-pass segmenter (x_t = 0, t = 0, sigmoid, BCE + soft
    Dice) for the same training minutes, predicted and evaluated alike (OUT/baseline/), reported beside
    SegDiff in results.json (`one_pass_baseline`, `segdiff_minus_one_pass`). It runs after the SegDiff
    pipeline and is not part of its budget.

--tiny is a pipeline check that runs on a CPU in minutes, NOT a result to compare with the paper: the
`tiny-fast` preset (1.2 M parameters, 32 x 32 windows) trained on random 32 x 32 crops of the real training
images, validated and tested on the central --tiny-crop x --tiny-crop (64) pixels of each image by the same
quadrant protocol scaled down (four 32 x 32 windows), with a smaller grid.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import rng
from ..api import SegDiff
from ..atomic import atomic_write_text
from ..config import TRAIN_COMPILE, AugmentConfig, RunConfig, preset
from ..data.folder import pair_split
from ..data.io import read_image, read_mask, read_prob, write_mask, write_png
from ..devices import synchronize
from ..errors import UserError
from ..metrics.baseline import MONUSEG_LEVELS, MONUSEG_THRESHOLDS, best_global_threshold
from ..metrics.evaluate import evaluate_dirs
from ..metrics.overlap import confusion, f1_from_confusion, iou_from_confusion
from ..predict.ensemble import sample_x0
from ..predict.figure import result_figure
from ..predict.run import predict_folder
from ..predict.tiling import windows
from ..train.logging import RunLog, plot_curves
from ..train.loop import train
from .machine import bench_device, environment
from .select import choose_setting

PAPER_TABLE3 = {  # MoNuSeg, Dice (F1) / IoU in percent
    "U-Net": {"dice": 79.43, "iou": 65.99},
    "MedT": {"dice": 79.55, "iou": 66.17},
    "SegDiff (paper)": {"dice": 81.59, "iou": 69.00},
}
# the validation grid: samplers x sampling steps x generations (issue 9)
GRID = {"samplers": ("ddim", "ddpm"), "sampling_steps": (1, 2, 5, 10, 25), "generations": (1, 2, 4, 8, 16)}
TINY_GRID = {"samplers": ("ddim", "ddpm"), "sampling_steps": (1, 2, 5, 10), "generations": (1, 2, 4, 8)}
GRID_SHARE = 0.5  # of the time left after training, at most this much for the validation grid
RESERVE_S = 30.0  # evaluation, figures and writing after prediction
PIPELINE_LABEL = (
    "PIPELINE CHECK ONLY (--tiny): tiny preset, reduced protocol on a CPU; not comparable with the paper's Table 3"
)


def log(msg: str) -> None:
    print(f"[monuseg {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- 1. data view ---------------------------------------------------------------------------------------


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())


def val_split(stems: list[str], n_val: int, seed: int) -> list[str]:
    """A seeded draw of n_val training stems (sorted), independent of the file order on disk."""
    stems = sorted(stems)
    if not 0 < n_val < len(stems):
        raise UserError(f"--val-images {n_val}: must be between 1 and {len(stems) - 1}")
    perm = torch.randperm(len(stems), generator=rng.generator(seed, "monuseg-val")).tolist()
    return sorted(stems[i] for i in perm[:n_val])


def _centre_crop(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if min(h, w) < size:
        raise UserError(f"--tiny-crop {size}: larger than an image ({w}x{h})")
    y, x = (h - size) // 2, (w - size) // 2
    return arr[y : y + size, x : x + size]


def build_view(
    data: Path, out: Path, n_val: int, seed: int, tiny_crop: int | None = None, test_images: int | None = None
) -> dict:
    """OUT/data/{train,val,test}/{images,masks}: symbolic links into DATA (never copies). With tiny_crop,
    val and test hold the central tiny_crop x tiny_crop pixels instead (small PNG files written under OUT)."""
    data = Path(data)
    for split in ("train", "test"):
        if not (data / split / "images").is_dir() or not (data / split / "masks").is_dir():
            raise UserError(
                f"{data}: expected {split}/images and {split}/masks (the layout of "
                "../shared/data/monuseg or of `segdiff prepare monuseg`)"
            )
    train_samples = pair_split(data / "train")
    test_samples = pair_split(data / "test")
    if test_images:
        test_samples = test_samples[:test_images]
    val_stems = set(val_split([s.stem for s in train_samples], n_val, seed))
    view = out / "data"
    if view.exists():
        shutil.rmtree(view)  # only links (and, with --tiny, crops) written by an earlier run
    parts = {
        "train": [s for s in train_samples if s.stem not in val_stems],
        "val": [s for s in train_samples if s.stem in val_stems],
        "test": test_samples,
    }
    for split, samples in parts.items():
        for s in samples:
            if tiny_crop and split != "train":
                for sub in ("images", "masks"):
                    (view / split / sub).mkdir(parents=True, exist_ok=True)
                image = _to_u8(_centre_crop(read_image(s.image), tiny_crop))
                write_png(view / split / "images" / f"{s.stem}.png", image)
                write_mask(view / split / "masks" / f"{s.stem}.png", _centre_crop(read_mask(s.mask), tiny_crop))
            else:
                _link(s.image, view / split / "images" / s.image.name)
                _link(s.mask, view / split / "masks" / s.mask.name)
    split = {k: [s.stem for s in v] for k, v in parts.items()}
    atomic_write_text(view / "split.json", json.dumps({"seed": seed, "source": str(data.resolve()), **split}, indent=2))
    return split


def _to_u8(arr01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(arr01 * 255), 0, 255).astype(np.uint8)


# -- 2. configuration ------------------------------------------------------------------------------------


def make_config(args, train_minutes: float) -> RunConfig:
    """The preset (default monuseg-fast; --tiny: tiny-fast at 32 x 32 with the monuseg augmentation) with
    its training turned into a time budget: `train_minutes` -> a fixed max_steps (TrainConfig.budget_minutes)."""
    cfg = preset(args.preset)
    if args.tiny:
        mon = preset("monuseg").data.augment
        size = 32
        # the paper's MoNuSeg augmentation at the tiny window size; tile = stride = 32 on 64 x 64 test crops
        cfg.data = replace(cfg.data, size=size, augment=replace(mon, crop=size))
        cfg.predict = replace(cfg.predict, mode="tile", tile_stride=None)
    else:
        cfg.train.num_workers = args.num_workers
    assert isinstance(cfg.data.augment, AugmentConfig)
    tc = cfg.train
    tc.batch_size = args.batch_size or tc.batch_size
    if args.max_steps:  # debugging: a fixed number of steps instead of the budget
        tc.max_steps, tc.budget_minutes = args.max_steps, None
    else:
        tc.max_steps, tc.budget_minutes = 10**9, train_minutes
    tc.val_every = args.val_every
    tc.val_max_images = None
    # the validation at the end of training only picks raw or EMA weights (the grid below chooses the sampling)
    tc.val_generations, tc.val_sampling_steps = 2, min(tc.val_sampling_steps or 10, 10)
    tc.save_every = 0  # weights are written once at the end (and best.safetensors at each better validation)
    tc.seed = args.seed
    if args.compile:
        tc.compile = args.compile
    return cfg


# -- 3. the sampling setting, chosen on the validation images -------------------------------------------------


def probe_seconds_per_call(model: SegDiff, window: torch.Tensor, batch: int, sampling_steps: int = 10) -> float:
    """Seconds per network call of the sampler at `batch` x 1 x tile x tile (G(I) included, amortised)."""
    device = model.device
    opts = model.sampling_options(generations=batch, sampling_steps=2, batch_generations=batch, seed=12345)
    sample_x0(model.net, model.schedule, window, ["probe"], opts)  # warm-up (kernels, allocator)
    synchronize(device)
    t0 = time.perf_counter()
    sample_x0(model.net, model.schedule, window, ["probe"], replace(opts, sampling_steps=sampling_steps))
    synchronize(device)
    return (time.perf_counter() - t0) / sampling_steps


def fit_batch_generations(model: SegDiff, window: torch.Tensor, want: int) -> int:
    """The largest batch <= want that runs (halving on CUDA out-of-memory)."""
    b = want
    while True:
        try:
            probe_seconds_per_call(model, window, b, sampling_steps=1)
            return b
        except torch.OutOfMemoryError:
            if b == 1:
                raise
            torch.cuda.empty_cache()
            b = max(1, b // 2)
            log(f"out of memory; trying --batch-generations {b}")


def load_split(folder: Path) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    return [
        (s.stem, torch.from_numpy(read_image(s.image)).permute(2, 0, 1), read_mask(s.mask)) for s in pair_split(folder)
    ]


def _scores(pred_masks: list[np.ndarray], gts: list[np.ndarray]) -> tuple[float, float]:
    cs = [confusion(p, g) for p, g in zip(pred_masks, gts)]
    return 100 * float(np.mean([iou_from_confusion(c) for c in cs])), 100 * float(
        np.mean([f1_from_confusion(c) for c in cs])
    )


def validation_grid(
    model: SegDiff, val: list, grid: dict, n_test: int, seconds: float, batch_generations: int, seed: int
) -> tuple[list[dict], float, list[dict]]:
    """Every (sampler, sampling_steps) of `grid`, cheapest first, run once on the validation images with the largest
    number of generations; the scores of n generations use the mean of the first n (the noise of generation
    k is keyed by k, so they are exactly what an n-generation run draws). A (sampler, sampling_steps) is skipped when
    the time measured so far says it would not finish within `seconds`. cost_s: the estimated seconds to
    predict the n_test test images with that setting (val seconds x n / G x n_test / n_val).
    Returns (rows, seconds spent, skipped)."""
    G = max(grid["generations"])
    gts = [m for _, _, m in val]
    rows, skipped, spent, per_sampling_step = [], [], 0.0, None
    for k in sorted(grid["sampling_steps"]):
        for s in grid["samplers"]:
            if k == 1 and s != grid["samplers"][0]:
                continue  # one step: every sampler returns the network's x0 at t = T (the same numbers)
            if per_sampling_step is not None and spent + per_sampling_step * k > seconds:
                skipped.append({"sampler": s, "sampling_steps": k, "estimate_s": per_sampling_step * k})
                continue
            opts = model.sampling_options(
                generations=G, sampling_steps=k, sampler=s, seed=seed, batch_generations=batch_generations
            )
            synchronize(model.device)
            t0 = time.perf_counter()
            x0 = [model.predict_x0(image[None], [stem], opts)[0].float().cpu() for stem, image, _ in val]
            synchronize(model.device)
            dt = time.perf_counter() - t0
            spent += dt
            per_sampling_step = max(per_sampling_step or 0.0, dt / k)
            for g in sorted(grid["generations"]):
                masks = [(((x[:g] + 1) / 2).clamp(0, 1).mean(0) >= 0.5).numpy() for x in x0]
                iou, dice = _scores(masks, gts)
                rows.append(
                    {
                        "sampler": s,
                        "sampling_steps": k,
                        "generations": g,
                        "iou": iou,
                        "dice": dice,
                        "val_seconds": dt * g / G,
                        "cost_s": dt * g / G * n_test / len(val),
                    }
                )
            best_k = max(r["iou"] for r in rows if r["sampling_steps"] == k and r["sampler"] == s)
            log(f"validation grid: {s} {k} sampling steps: best IoU {best_k:.2f} ({dt:.1f} s for {G} generations)")
    return rows, spent, skipped


def grid_figure(path: Path, rows: list[dict], chosen: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in sorted({r["sampler"] for r in rows}):
        for k in sorted({r["sampling_steps"] for r in rows if r["sampler"] == s}):
            rr = [r for r in rows if r["sampler"] == s and r["sampling_steps"] == k]
            ax.plot([r["cost_s"] for r in rr], [r["iou"] for r in rr], marker="o", label=f"{s} {k} steps")
    ax.scatter([chosen["cost_s"]], [chosen["iou"]], s=200, facecolors="none", edgecolors="k", label="chosen")
    ax.set_xscale("log")
    ax.set_xlabel("estimated seconds to predict the test split (points: 1, 2, 4, ... generations)")
    ax.set_ylabel("validation IoU %")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- a reference: the best global grey-level threshold ----------------------------------------------------


def threshold_baseline(view: Path) -> dict:
    """The global grey-level threshold (and polarity) with the best mean IoU on the training images,
    applied to the test images: what a segmentation must beat to have learned more than intensity
    (segdiff.metrics.baseline, its MoNuSeg protocol: grey levels 0..255)."""

    def pairs(split):  # read one image at a time
        return ((read_image(s.image), read_mask(s.mask)) for s in pair_split(view / split))

    best = best_global_threshold(pairs("train"), MONUSEG_THRESHOLDS, MONUSEG_LEVELS, apply_to=pairs("test"))
    return {
        "dice_percent": 100 * float(best.dice.mean()),
        "iou_percent": 100 * float(best.iou.mean()),
        "rule": f"foreground where grey (mean of RGB, 0-255) is {'>=' if best.polarity == 'above' else '<'} "
        f"{best.threshold}",
        "chosen_on": "the training images (best mean IoU)",
    }


# -- 6. figures ---------------------------------------------------------------------------------------------


def test_figure(path: Path, view: Path, pred: Path, stems: list[str], per_image: dict[str, dict]) -> None:
    """figure.png: per test image, the input, probability, uncertainty, mask, errors and truth
    (segdiff.predict.figure.result_figure), each row labelled with the image's Dice and IoU."""
    images, probs, uncs, masks, truths, labels = [], [], [], [], [], []
    for stem in stems:
        images.append(read_image(next((view / "test" / "images").glob(f"{stem}.*"))))
        truths.append(read_mask(next((view / "test" / "masks").glob(f"{stem}.*"))))
        probs.append(read_prob(pred / "prob" / f"{stem}.tif"))
        uncs.append(read_prob(pred / "uncertainty" / f"{stem}.tif"))
        masks.append(read_mask(pred / "masks" / f"{stem}.png"))
        s = per_image.get(stem, {})
        labels.append(f"{stem}\nDice {100 * s.get('f1', float('nan')):.1f} IoU {100 * s.get('iou', float('nan')):.1f}")
    result_figure(
        path, images, probs, uncs, truths, mask=masks, row_labels=labels, panel_size=(2.4, 2.5), fontsize=9, dpi=90
    )


# -- the command line -------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m segdiff.bench.monuseg",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--data", required=True, type=Path, help="MoNuSeg root: {train,test}/{images,masks}")
    p.add_argument("--out", required=True, type=Path, help="output folder (results.json, PNGs, run/, pred/)")
    p.add_argument(
        "--budget-minutes",
        type=float,
        help="wall-time budget of the SegDiff pipeline (training, choice of the sampling setting on validation, "
        "test prediction, evaluation), split by the script (default 9; --tiny: 4)",
    )
    p.add_argument(
        "--train-fraction",
        type=float,
        default=0.65,
        help="share of --budget-minutes given to training (0.65); the rest: validation grid, test, evaluation",
    )
    p.add_argument("--train-minutes", type=float, help="training minutes (default: the fraction of the budget)")
    p.add_argument("--preset", help="default monuseg-fast (--tiny: tiny-fast); monuseg = the paper's recipe")
    p.add_argument("--compile", choices=TRAIN_COMPILE, help="torch.compile the training step (= segdiff train's)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], help="with --generations and --steps: skip the grid")
    p.add_argument("--generations", type=int, help="G, generations per window (with --steps: a fixed protocol)")
    p.add_argument("--steps", type=int, help="K, sampling steps (with --generations: a fixed protocol)")
    p.add_argument("--val-images", type=int, default=4, help="training images held out for validation (4)")
    p.add_argument("--val-every", type=int, default=0, help="validate during training every N steps (0: at the end)")
    p.add_argument("--no-baseline", action="store_true", help="skip the one-pass baseline at equal training minutes")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available; --tiny: cpu)")
    p.add_argument("--batch-size", type=int, help="training batch (default: the preset's)")
    p.add_argument(
        "--batch-generations",
        type=int,
        help="samples per network call at prediction (default: 4 windows x the grid's largest G on CUDA, "
        "halved on out-of-memory; 32 on CPU)",
    )
    p.add_argument("--num-workers", type=int, default=4, help="data-loader workers for training on CUDA (4)")
    p.add_argument("--max-steps", type=int, help="train a fixed number of steps instead of the budget (debugging)")
    p.add_argument("--test-images", type=int, help="predict only the first N test images (debugging)")
    p.add_argument("--figure-images", type=int, default=3, help="test images in figure.png (3)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 helps on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CPU pipeline check (tiny-fast preset, 64 x 64 test crops)")
    p.add_argument("--tiny-crop", type=int, default=64, help="--tiny: central crop of val/test images (64)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/run, OUT/pred and results of a former run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.budget_minutes is None:
        args.budget_minutes = 4.0 if args.tiny else 9.0
    if args.preset is None:
        args.preset = "tiny-fast" if args.tiny else "monuseg-fast"
    if args.train_minutes is None:
        args.train_minutes = args.budget_minutes * args.train_fraction
    if not 0 < args.train_minutes < args.budget_minutes:
        raise UserError(f"--train-minutes {args.train_minutes:g}: must be above 0 and below --budget-minutes")
    fixed = [args.generations, args.steps]
    if any(v is not None for v in fixed) and not all(v is not None for v in fixed):
        raise UserError("--generations and --steps go together (a fixed protocol instead of the validation grid)")
    return args


# -- the phases of one run ---------------------------------------------------------------------------------------


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


def _write_json(path: Path, obj: dict) -> None:
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


def _test_scores(scores: dict) -> dict:
    return {
        "dice_percent": 100 * scores["f1"],
        "iou_percent": 100 * scores["iou"],
        "dice_pooled_percent": 100 * scores["f1_pooled"],
        "iou_pooled_percent": 100 * scores["iou_pooled"],
        "boundf_percent": 100 * scores["boundf"],
        "wcov_paper_percent": 100 * scores["wcov"],
        "calibration": {k: scores["calibration"][k] for k in ("mean", "stderr", "pooled", "ece")},
        # issue 20: the error AUROC of the uncertainty maps (SegDiff: std over generations) and of the
        # probability's own confidence (all the one-pass baseline has), pooled over the test pixels
        "uncertainty_auroc": (scores.get("uncertainty_auroc") or {}).get("pooled"),
        "confidence_auroc": (scores.get("confidence_auroc") or {}).get("pooled"),
        "n_images": scores["n_images"],
        "averaging": "per-image Dice (F1) and IoU of the foreground, averaged over the test images "
        "(as the paper's tables); pooled: over all test pixels",
        "empty_mask_policy": scores["policy"]["mode"],
    }


def _training_record(trained: Trained) -> dict:
    summary, cfg, rows = trained.summary, trained.cfg, trained.rows
    train_rows = [r for r in rows if r.get("kind") == "train"]
    budget_rows = [r for r in rows if r.get("kind") == "budget"]
    waits = [r["data_wait_frac"] for r in train_rows if "data_wait_frac" in r]
    return {
        "preset": cfg.preset,
        "optimizer_steps": summary["step"],
        "seconds": summary["elapsed_s"],
        "minutes_budget": cfg.train.budget_minutes,
        "budget_fix": budget_rows[0] if budget_rows else None,
        "stopped_by": summary["stopped_by"],
        "compile": summary.get("compile"),
        "batch_size": cfg.train.batch_size,
        "prediction": cfg.model.prediction,
        "lr": cfg.train.lr,
        "lr_schedule": cfg.train.lr_schedule,
        "lr_min": cfg.train.lr_min,
        "warmup_steps": cfg.train.warmup_steps,
        "ema_rate": cfg.train.ema_rate,
        "t_sampling": cfg.train.t_sampling,
        "optimizer_steps_per_second": summary["step"] / max(summary["elapsed_s"], 1e-9),
        "data_wait_fraction_mean": float(np.mean(waits)) if waits else None,
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "best_validation": summary["best"],
    }


# phase 1


def data_phase(bench: Bench) -> dict:
    """OUT/data, the view of --data: train, val (a seeded draw of --val-images) and test stems."""
    args = bench.args
    split = bench.phases.run(
        "data",
        build_view,
        args.data,
        bench.out,
        args.val_images,
        args.seed,
        args.tiny_crop if args.tiny else None,
        args.test_images,
    )
    log(
        f"data view {bench.view}: {len(split['train'])} train, {len(split['val'])} val ({', '.join(split['val'])}), "
        f"{len(split['test'])} test; budget {args.budget_minutes:g} min, training {args.train_minutes:.2f} min"
    )
    return split


# phase 2


def segdiff_train_phase(bench: Bench) -> Trained:
    """SegDiff for --train-minutes (the budget is turned into a fixed number of steps after the first steps)."""
    trained = train_phase(bench, "train", make_config(bench.args, bench.args.train_minutes), bench.out / "run")
    plot_curves(trained.rows, bench.out / "curves.png")
    s = trained.summary
    log(f"trained {s['step']} steps in {s['elapsed_s'] / 60:.2f} min ({s['stopped_by']}); best validation {s['best']}")
    return trained


# phase 3


@dataclass
class Selection:
    """The sampling setting for the test split, and how it was chosen."""

    chosen: dict  # sampler, sampling_steps, generations (and, from the grid, its validation scores)
    choice: dict  # choose_setting's answer: row, best_iou, reason
    grid: dict | None  # None: fixed by --generations/--steps
    rows: list[dict]
    skipped: list[dict]
    batch_generations: int
    windows_per_image: int
    test_resolution: list[int]


def select_phase(bench: Bench, model: SegDiff, split: dict) -> Selection:
    """The batch of generations that fits the device, then the sampling setting: fixed by --generations and
    --steps, else chosen on the validation images from the grid within GRID_SHARE of the time left."""
    args, device = bench.args, bench.device
    tile = model.config.data.size
    val = load_split(bench.view / "val")
    image0 = val[0][1][None].to(device)
    h, w = image0.shape[-2:]
    n_windows = len(windows(h, w, tile, model.config.predict.tile_stride or tile))
    grid = TINY_GRID if args.tiny else GRID
    g_max = args.generations or max(grid["generations"])
    want_bg = args.batch_generations or (n_windows * g_max if device.type == "cuda" else 32)
    window = model.normalize(image0)[..., :tile, :tile]
    per_batch = fit_batch_generations(model, window, want_bg) if device.type == "cuda" else want_bg
    if args.generations:
        chosen = {
            "sampler": args.sampler or model.config.predict.sampler,
            "sampling_steps": args.steps,
            "generations": args.generations,
        }
        choice = {"reason": "fixed by --generations/--steps (no validation grid)", "row": chosen, "best_iou": None}
        selection = Selection(chosen, choice, None, [], [], per_batch, n_windows, [int(h), int(w)])
    else:
        rows, _, skipped = bench.phases.run(
            "select",
            validation_grid,
            model,
            val,
            grid,
            len(split["test"]),
            GRID_SHARE * bench.seconds_left(),
            per_batch,
            args.seed,
        )
        choice = choose_setting(rows, bench.seconds_left())
        grid_figure(bench.out / "selection.png", rows, choice["row"])
        selection = Selection(choice["row"], choice, grid, rows, skipped, per_batch, n_windows, [int(h), int(w)])
    log(f"sampling setting: {selection.chosen} ({choice['reason']})")
    return selection


# phases 4 and 5


def sampling_of(selection: Selection) -> dict:
    """predict_folder's sampling overrides for the chosen setting."""
    c = selection.chosen
    return {
        "generations": c["generations"],
        "steps": c["sampling_steps"],
        "sampler": c["sampler"],
        "batch_generations": selection.batch_generations,
    }


def figures_phase(bench: Bench, split: dict) -> None:
    """figure.png (the first --figure-images test images) and reliability.png."""
    out, metrics_dir = bench.out, bench.out / "metrics"

    def figures():
        with open(metrics_dir / "summary_per_image.csv") as fh:
            per_image = {r["stem"]: {k: float(r[k]) for k in ("f1", "iou")} for r in csv.DictReader(fh)}
        show = sorted(split["test"])[: bench.args.figure_images]
        test_figure(out / "figure.png", bench.view, out / "pred", show, per_image)
        shutil.copy(metrics_dir / "summary_reliability.png", out / "reliability.png")

    bench.phases.run("figures", figures)


# results.json


def segdiff_result(
    bench: Bench, split: dict, trained: Trained, sel: Selection, pred: dict, scores: dict, reference: dict
) -> dict:
    """results.json of the SegDiff pipeline: scores, protocol, selection, training, environment."""
    args, model, device = bench.args, trained.model, bench.device
    opts = model.sampling_options(**sampling_of(sel), seed=args.seed)
    tile = model.config.data.size
    ours = {"dice": 100 * scores["f1"], "iou": 100 * scores["iou"]}
    segdiff_s = time.time() - bench.t_start
    cfg = trained.cfg
    result = {
        "benchmark": "MoNuSeg (issues 3, 9)",
        "label": PIPELINE_LABEL if args.tiny else "MoNuSeg test split, the paper's quadrant protocol",
        "budget_minutes": args.budget_minutes,
        "segdiff_pipeline_minutes": segdiff_s / 60,
        "within_budget": segdiff_s <= bench.budget_s,
        "phases_s": bench.phases.seconds,
        "test": _test_scores(scores),
        "reference_global_threshold": reference,
        "selection": {
            "rule": "the cheapest setting of the grid within 0.5 IoU points of the grid's best on the validation "
            "images whose estimated test time fits what is left of the budget (segdiff.bench.select.choose_setting)",
            "grid": sel.grid,
            "grid_share_of_time_left": GRID_SHARE,
            "validation_scores": sel.rows,
            "skipped": sel.skipped,
            "chosen": sel.chosen,
            "best_val_iou": sel.choice["best_iou"],
            "reason": sel.choice["reason"],
            "validation_images": split["val"],
        },
        "protocol": {
            "preset": model.config.preset + (" (pipeline check)" if args.tiny else ""),
            "test_images": split["test"],
            "test_resolution": sel.test_resolution,
            "test_input": (
                f"central {args.tiny_crop}x{args.tiny_crop} crop of each 512x512 test image"
                if args.tiny
                else "the full 512x512 test image"
            ),
            "window": tile,
            "stride": opts.tile_stride or tile,
            "windows_per_image": sel.windows_per_image,
            "g_per_window": True,
            "generations": sel.chosen["generations"],
            "sampling_steps": sel.chosen["sampling_steps"],
            "T": model.config.diffusion.steps,
            "sampler": opts.sampler,
            "variance": opts.variance,
            "clip_x0": opts.clip_x0,
            "prediction": model.config.model.prediction,
            "amp": "bf16" if device.type == "cuda" else "fp32",
            "seed": args.seed,
            "batch_generations": sel.batch_generations,
            "weights": Path(model.weights_file or "").name,
            "predict_seconds": pred["seconds"],
            "mask": "mean over generations of clamp((x0 + 1) / 2) >= 0.5",
        },
        "training": {
            **_training_record(trained),
            "val_every": cfg.train.val_every,
            "validation": f"{len(split['val'])} held-out training images, {cfg.train.val_generations} "
            f"generations x {cfg.train.val_sampling_steps} sampling steps; the better of raw and EMA weights is kept",
            "train_images": split["train"],
            "val_images": split["val"],
            "crop": cfg.data.augment.crop,
            "augmentation": asdict(cfg.data.augment),
            "parameters_M": sum(p.numel() for p in model.net.parameters()) / 1e6,
        },
        "environment": environment(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "files": [
            "results.json",
            "curves.png",
            "figure.png",
            "reliability.png",
            "selection.png",
            "metrics/summary.json",
            "metrics/summary_per_image.csv",
        ],
    }
    if not args.tiny:
        result["paper_table3"] = PAPER_TABLE3
        result["gap_to_paper_segdiff"] = {k: ours[k] - PAPER_TABLE3["SegDiff (paper)"][k] for k in ours}
    log(
        f"{result['label']}: Dice {ours['dice']:.2f} %, IoU {ours['iou']:.2f} % over {scores['n_images']} test "
        f"images; SegDiff pipeline {segdiff_s / 60:.2f} min of {args.budget_minutes:g} -> {bench.out / 'results.json'}"
    )
    return result


# phase 6


def baseline_phase(bench: Bench, cfg: RunConfig, minutes: float) -> dict:
    """The same network trained as a plain one-pass segmenter (x_t = 0, t = 0, sigmoid, BCE + soft Dice) for
    the same training minutes, predicted once per window by the same quadrant protocol, evaluated alike."""
    bcfg = copy.deepcopy(cfg)
    bcfg.preset = f"{cfg.preset} as a one-pass segmenter"
    bcfg.model.prediction = "onepass"
    # the diffusion-only levers of the recipe (issue 20) are off for the one-pass segmenter
    bcfg.model.x0_output, bcfg.model.self_condition = "direct", False
    bcfg.train.seg_loss_weight, bcfg.train.mse_loss_weight, bcfg.train.onepass_steps, bcfg.train.p_t_max = (
        0.0,
        1.0,
        0,
        0.0,
    )
    bcfg.predict.start_t = None
    bcfg.train.budget_fixed_at = None
    if bcfg.train.budget_minutes is not None:
        bcfg.train.budget_minutes, bcfg.train.max_steps = minutes, 10**9
    bcfg.train.val_generations, bcfg.train.val_sampling_steps = 1, 1
    folder = bench.out / "baseline"
    trained = train_phase(bench, "baseline_train", bcfg, folder / "run")
    _, scores = predict_phase(bench, "baseline_", trained.model, folder, generations=1)
    return {
        "label": f"one-pass segmenter, same network, {trained.summary['elapsed_s'] / 60:.2f} training minutes",
        "test": _test_scores(scores),
        "training": _training_record(trained),
        "protocol": "one forward per 256 x 256 window (x_t = 0, t = 0), mask = sigmoid >= 0.5"
        if not bench.args.tiny
        else "one forward per window (x_t = 0, t = 0), mask = sigmoid >= 0.5",
    }


def add_baseline(result: dict, base: dict) -> None:
    ours, bt = result["test"], base["test"]
    result["one_pass_baseline"] = base
    result["segdiff_minus_one_pass"] = {
        "dice": ours["dice_percent"] - bt["dice_percent"],
        "iou": ours["iou_percent"] - bt["iou_percent"],
    }
    log(
        f"one-pass baseline ({base['label']}): Dice {bt['dice_percent']:.2f} %, IoU {bt['iou_percent']:.2f} %; "
        f"SegDiff {'beats' if ours['iou_percent'] > bt['iou_percent'] else 'does NOT beat'} it "
        f"({result['segdiff_minus_one_pass']['iou']:+.2f} IoU points)"
    )


def main(argv=None) -> dict:
    """The phases in order (module docstring); results.json is written after the SegDiff pipeline and again
    after the one-pass baseline."""
    bench = start(parse_args(argv))
    split = data_phase(bench)  # 1
    trained = segdiff_train_phase(bench)  # 2
    selection = select_phase(bench, trained.model, split)  # 3
    pred, scores = predict_phase(bench, "", trained.model, bench.out, **sampling_of(selection))  # 4, 5
    figures_phase(bench, split)
    reference = threshold_baseline(bench.view)
    result = segdiff_result(bench, split, trained, selection, pred, scores, reference)
    _write_json(bench.out / "results.json", result)
    if not bench.args.no_baseline:  # 6: after the SegDiff pipeline, outside its budget
        add_baseline(result, baseline_phase(bench, trained.cfg, trained.summary["elapsed_s"] / 60))
    result["phases_s"] = bench.phases.seconds
    result["total_minutes"] = (time.time() - bench.t_start) / 60
    _write_json(bench.out / "results.json", result)
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
