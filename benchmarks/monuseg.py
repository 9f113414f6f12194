"""The MoNuSeg benchmark (issue 3): train the `monuseg` preset for a fixed time, predict the test split with
the paper's protocol, evaluate, and write a small results.json and PNG figures.

    PYTHONPATH=src python3 benchmarks/monuseg.py --data /path/to/monuseg --out OUT
        [--train-minutes 13] [--generations 30 --steps 100] [--val-images 4] [--device cuda]
        [--fit-budget 30]
    PYTHONPATH=src python3 benchmarks/monuseg.py --data /path/to/monuseg --out OUT --tiny   # CPU pipeline check

The data folder is the layout of ../shared/data/monuseg (and of `segdiff prepare monuseg`):
DATA/{train,test}/{images,masks}/<stem>.<ext>, 30 train and 14 test images at 512 x 512.

What one run does, in order:
 1. OUT/data: a view of DATA made of symbolic links (nothing is copied): `val` holds --val-images of the
    30 training images (a seeded draw), `train` the others, `test` the test split. OUT/data/split.json
    lists the stems.
 2. Trains the `monuseg` preset (batch 8, random 256 x 256 crops with the paper's augmentation) on
    OUT/data for --train-minutes of wall time (config.train.max_minutes), validating on the val images
    every --val-every steps; the weights with the best validation IoU (raw or EMA) are kept. The run
    folder OUT/run holds the checkpoints; nothing in results.json depends on them.
 3. Measures the sampler: seconds per network call at the batch that prediction uses.
 4. Chooses the protocol: by default G = 30 generations x K = 100 steps (the paper's), or what
    --generations / --steps say, and reports whether it fits the --budget-minutes (30) of the whole run.
    With --fit-budget MINUTES it takes the largest G x K of a fixed ladder that fits what is left of
    MINUTES (counted from the start of the run). results.json says what was run and why.
 5. Predicts the test split at 512 x 512 by the quadrant protocol: four 256 x 256 windows (stride 256),
    G(I) and the G generations computed per window, as the authors did (predict_mode "tile").
 6. Evaluates with segdiff.metrics.evaluate.evaluate_dirs (per-image Dice/F1 and IoU averaged over the
    images, as the paper's Table 3) and writes OUT/results.json, OUT/curves.png (training loss and
    validation IoU), OUT/figure.png (test images with probability, uncertainty and errors) and
    OUT/metrics/ (per-image CSV, summary, reliability diagram).

--tiny is a pipeline check that runs on a CPU in minutes, NOT a result to compare with the paper: the
`tiny` preset (1.2 M parameters, 32 x 32 windows) trained for a few minutes on random 32 x 32 crops of
the real training images, tested on the central --tiny-crop x --tiny-crop (64) pixels of each test image
by the same quadrant protocol scaled down (four 32 x 32 windows), with 4 generations x 10 steps.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

try:
    import segdiff  # noqa: F401
except ImportError:  # run from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np
import torch

from segdiff import __version__, rng
from segdiff.api import SegDiff
from segdiff.config import AugmentConfig, RunConfig, preset
from segdiff.data.folder import pair_split
from segdiff.data.io import read_image, read_mask, write_mask, write_png
from segdiff.errors import UserError
from segdiff.metrics.evaluate import evaluate_dirs, read_prob
from segdiff.predict.ensemble import SamplingOptions, _chunks, sample_x0
from segdiff.predict.run import predict_folder
from segdiff.predict.tiling import windows
from segdiff.train.logging import RunLog, plot_curves
from segdiff.train.loop import train

PAPER_TABLE3 = {  # MoNuSeg, Dice (F1) / IoU in percent
    "U-Net": {"dice": 79.43, "iou": 65.99},
    "MedT": {"dice": 79.55, "iou": 66.17},
    "SegDiff (paper)": {"dice": 81.59, "iou": 69.00},
}
PAPER_PROTOCOL = (30, 100)  # generations, sampling steps (T = 100)
# --fit-budget: the first (G, K) of this ladder (each about half the cost of the one before) that fits.
# Steps are reduced first (a respaced DDPM chain of 50 steps loses little), then generations.
LADDER = [(30, 100), (30, 50), (16, 50), (16, 25), (8, 25), (8, 10), (4, 10), (2, 10), (1, 10)]
RESERVE_S = 60.0  # evaluation, figures and writing after prediction
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
    (view / "split.json").write_text(json.dumps({"seed": seed, "source": str(data.resolve()), **split}, indent=2))
    return split


def _to_u8(arr01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(arr01 * 255), 0, 255).astype(np.uint8)


# -- 2. configuration ------------------------------------------------------------------------------------


def make_config(args) -> RunConfig:
    if args.tiny:
        cfg = preset("tiny")
        mon = preset("monuseg").data.augment
        size = 32
        # the paper's MoNuSeg augmentation at the tiny window size; tile = stride = 32 on 64 x 64 test crops
        cfg.data = replace(cfg.data, size=size, predict_mode="tile", tile_stride=None, augment=replace(mon, crop=size))
        cfg.train.val_generations, cfg.train.val_steps = 4, 10
    else:
        cfg = preset("monuseg")
        cfg.train.val_generations, cfg.train.val_steps = 4, 25
        cfg.train.num_workers = args.num_workers
    assert isinstance(cfg.data.augment, AugmentConfig)
    tc = cfg.train
    tc.batch_size = args.batch_size or tc.batch_size
    tc.max_minutes = args.train_minutes
    tc.max_steps = args.max_steps or 10_000_000  # the time budget stops training
    tc.val_every = args.val_every
    tc.val_max_images = None
    tc.save_every = 0  # weights are written once at the end (and best.safetensors at each better validation)
    tc.seed = args.seed
    return cfg


# -- 3./4. sampler cost and the protocol --------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunk_batches(n_windows: int, generations: int, per_batch: int) -> list[int]:
    """Network batch sizes of one image's sampling chain (sample_x0's chunking of windows x generations)."""
    return [(b1 - b0) * (g1 - g0) for b0, b1, g0, g1 in _chunks(n_windows, generations, max(1, per_batch))]


def probe_seconds_per_call(model: SegDiff, window: torch.Tensor, batch: int, steps: int = 10) -> float:
    """Seconds per network call of the sampler at `batch` x 1 x tile x tile (G(I) included, amortised)."""
    device = model.device
    opts = SamplingOptions(
        generations=batch,
        steps=2,
        batch_generations=batch,
        seed=12345,
        variance=model.config.diffusion.variance,
        clip_x0=model.config.diffusion.clip_x0,
    )
    sample_x0(model.net, model.schedule, window, ["probe"], opts)  # warm-up (kernels, allocator)
    _sync(device)
    t0 = time.perf_counter()
    sample_x0(model.net, model.schedule, window, ["probe"], replace(opts, steps=steps))
    _sync(device)
    return (time.perf_counter() - t0) / steps


class SamplerCost:
    """Seconds per network call by batch size, probed on demand (and cached)."""

    def __init__(self, model: SegDiff, window: torch.Tensor, probe_steps: int):
        self.model, self.window, self.probe_steps, self.measured = model, window, probe_steps, {}

    def per_call(self, batch: int) -> float:
        if batch not in self.measured:
            self.measured[batch] = probe_seconds_per_call(self.model, self.window, batch, self.probe_steps)
            log(f"sampler: {self.measured[batch]:.4f} s per network call at batch {batch}")
        return self.measured[batch]

    def estimate(self, n_images: int, n_windows: int, g: int, k: int, per_batch: int) -> float:
        return n_images * k * sum(self.per_call(b) for b in chunk_batches(n_windows, g, per_batch))


def fit_batch_generations(model: SegDiff, window: torch.Tensor, want: int) -> int:
    """The largest batch <= want that runs (halving on CUDA out-of-memory)."""
    b = want
    while True:
        try:
            probe_seconds_per_call(model, window, b, steps=1)
            return b
        except torch.OutOfMemoryError:
            if b == 1:
                raise
            torch.cuda.empty_cache()
            b = max(1, b // 2)
            log(f"out of memory; trying --batch-generations {b}")


def choose_protocol(args, cost: SamplerCost, n_images: int, n_windows: int, per_batch: int, t_start: float):
    """-> (G, K, record): the protocol to run and how it was chosen."""
    g0, k0 = args.generations, args.steps
    left = lambda budget_min: budget_min * 60 - (time.time() - t_start) - RESERVE_S  # noqa: E731
    if args.fit_budget is None:
        est = cost.estimate(n_images, n_windows, g0, k0, per_batch)
        fits = est <= left(args.budget_minutes)
        label = "the paper protocol" if (g0, k0) == PAPER_PROTOCOL else f"the requested protocol {g0} x {k0}"
        reason = (
            f"{label} ({g0} generations x {k0} steps), estimated {est / 60:.1f} min for prediction; "
            f"{'fits' if fits else 'does NOT fit'} the {args.budget_minutes:g}-minute budget of the run "
            f"({max(0.0, left(args.budget_minutes)) / 60:.1f} min left after a {RESERVE_S:.0f} s reserve)"
        )
        if not fits:
            reason += f"; run anyway as requested (pass --fit-budget {args.budget_minutes:g} to fit it)"
        return g0, k0, {"mode": "requested", "estimate_s": est, "fits_budget": fits, "reason": reason}
    budget = left(args.fit_budget)
    ladder = [(g0, k0)] + [(g, k) for g, k in LADDER if g <= g0 and k <= k0 and (g, k) != (g0, k0)]
    tried = []
    for g, k in ladder:
        est = cost.estimate(n_images, n_windows, g, k, per_batch)
        tried.append({"generations": g, "steps": k, "estimate_s": est})
        if est <= budget:
            reason = (
                f"--fit-budget {args.fit_budget:g}: {g} generations x {k} steps, the first of the ladder "
                f"that fits ({est / 60:.1f} min estimated, {budget / 60:.1f} min left)"
            )
            if (g, k) != (g0, k0):
                reason += f"; {g0} x {k0} was estimated at {tried[0]['estimate_s'] / 60:.1f} min"
            return (
                g,
                k,
                {"mode": "fit_budget", "estimate_s": est, "fits_budget": True, "reason": reason, "ladder_tried": tried},
            )
    g, k = ladder[-1]
    reason = (
        f"--fit-budget {args.fit_budget:g}: nothing on the ladder fits {budget / 60:.1f} min; running the "
        f"cheapest, {g} x {k} ({tried[-1]['estimate_s'] / 60:.1f} min estimated)"
    )
    return (
        g,
        k,
        {
            "mode": "fit_budget",
            "estimate_s": tried[-1]["estimate_s"],
            "fits_budget": False,
            "reason": reason,
            "ladder_tried": tried,
        },
    )


# -- a reference: the best global grey-level threshold ----------------------------------------------------


def _grey_hists(samples) -> tuple[np.ndarray, np.ndarray]:
    """Per image, 256-bin histograms of the grey level (mean of RGB) of foreground and background pixels."""
    fg, bg = [], []
    for image_path, mask_path in samples:
        grey = np.round(read_image(image_path).mean(axis=-1) * 255).astype(np.int64)
        mask = read_mask(mask_path)
        fg.append(np.bincount(grey[mask], minlength=256))
        bg.append(np.bincount(grey[~mask], minlength=256))
    return np.stack(fg), np.stack(bg)


def _threshold_scores(fg: np.ndarray, bg: np.ndarray) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(polarity, t) -> per-image (IoU, Dice) of predicting foreground where grey >= t ("above") or < t."""
    out = {}
    fg_above = np.cumsum(fg[:, ::-1], axis=1)[:, ::-1]  # pixels with grey >= t, t = 0..255
    bg_above = np.cumsum(bg[:, ::-1], axis=1)[:, ::-1]
    n_fg = fg.sum(axis=1)
    for t in range(256):
        for polarity, tp, fp in (
            ("above", fg_above[:, t], bg_above[:, t]),
            ("below", n_fg - fg_above[:, t], bg.sum(axis=1) - bg_above[:, t]),
        ):
            fn = n_fg - tp
            union, total = tp + fp + fn, 2 * tp + fp + fn
            iou = np.where(union > 0, tp / np.maximum(union, 1), 1.0)
            dice = np.where(total > 0, 2 * tp / np.maximum(total, 1), 1.0)
            out[(polarity, t)] = (iou, dice)
    return out


def threshold_baseline(view: Path) -> dict:
    """The global grey-level threshold (and polarity) with the best mean IoU on the training images,
    applied to the test images: what a segmentation must beat to have learned more than intensity."""

    def pairs(split):
        return [(s.image, s.mask) for s in pair_split(view / split)]

    train_scores = _threshold_scores(*_grey_hists(pairs("train")))
    (polarity, t), _ = max(train_scores.items(), key=lambda kv: float(kv[1][0].mean()))
    iou, dice = _threshold_scores(*_grey_hists(pairs("test")))[(polarity, t)]
    return {
        "dice_percent": 100 * float(dice.mean()),
        "iou_percent": 100 * float(iou.mean()),
        "rule": f"foreground where grey (mean of RGB, 0-255) is {'>=' if polarity == 'above' else '<'} {t}",
        "chosen_on": "the training images (best mean IoU)",
    }


# -- 6. figures ---------------------------------------------------------------------------------------------


def test_figure(path: Path, view: Path, pred: Path, stems: list[str], per_image: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ["image", "ground truth", "probability", "uncertainty (std)", "mask (p >= 0.5)", "errors"]
    fig, axes = plt.subplots(len(stems), len(titles), figsize=(2.4 * len(titles), 2.5 * len(stems)), squeeze=False)
    for r, stem in enumerate(stems):
        image = read_image(next((view / "test" / "images").glob(f"{stem}.*")))
        gt = read_mask(next((view / "test" / "masks").glob(f"{stem}.*")))
        prob = read_prob(pred / "prob" / f"{stem}.tif")
        unc = read_prob(pred / "uncertainty" / f"{stem}.tif")
        mask = read_mask(pred / "masks" / f"{stem}.png")
        err = np.zeros((*gt.shape, 3))
        err[mask & gt] = (1, 1, 1)  # true positive: white
        err[mask & ~gt] = (1, 0.2, 0.2)  # false positive: red
        err[~mask & gt] = (0.2, 0.5, 1)  # false negative: blue
        panels = [
            (image, {}),
            (gt, {"cmap": "gray"}),
            (prob, {"cmap": "jet", "vmin": 0, "vmax": 1}),
            (unc, {"cmap": "inferno", "vmin": 0, "vmax": 0.5}),
            (mask, {"cmap": "gray"}),
            (err, {}),
        ]
        for c, (p, kw) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(p, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        s = per_image.get(stem, {})
        axes[r][0].set_ylabel(
            f"{stem}\nDice {100 * s.get('f1', float('nan')):.1f} IoU {100 * s.get('iou', float('nan')):.1f}", fontsize=7
        )
    fig.suptitle("errors: white = true positive, red = false positive, blue = false negative", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- environment ----------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    env = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "segdiff": __version__,
        "numpy": np.__version__,
    }
    repo = Path(__file__).resolve().parents[1]
    try:  # read-only queries; absent when the tree is not a git checkout
        env["git_commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        env["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


# -- main -------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="MoNuSeg root: {train,test}/{images,masks}")
    p.add_argument("--out", required=True, type=Path, help="output folder (results.json, PNGs, run/, pred/)")
    p.add_argument("--train-minutes", type=float, help="training wall-time budget (default 13; --tiny: 3)")
    p.add_argument("--generations", type=int, help="G, generations per window (default 30; --tiny: 4)")
    p.add_argument("--steps", type=int, help="K, sampling steps (default 100 = T; --tiny: 10)")
    p.add_argument("--val-images", type=int, default=4, help="training images held out for validation (4)")
    p.add_argument("--val-every", type=int, help="validate every N steps (default 1000; --tiny: 0 = at the end only)")
    p.add_argument(
        "--fit-budget",
        type=float,
        metavar="MINUTES",
        help="choose G x K so that the whole run fits MINUTES (counted from its start)",
    )
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=30.0,
        help="the run's budget that the default protocol is checked against (30); report only",
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when available; --tiny: cpu)")
    p.add_argument("--batch-size", type=int, help="training batch (default 8; --tiny: the tiny preset's 16)")
    p.add_argument(
        "--batch-generations",
        type=int,
        help="samples per network call at prediction (default: 4 windows x G on CUDA, halved on "
        "out-of-memory; 30 on CPU)",
    )
    p.add_argument("--num-workers", type=int, default=4, help="data-loader workers for training on CUDA (4)")
    p.add_argument("--max-steps", type=int, help="also stop training after N steps (debugging)")
    p.add_argument("--test-images", type=int, help="predict only the first N test images (debugging)")
    p.add_argument("--figure-images", type=int, default=3, help="test images in figure.png (3)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 helps on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CPU pipeline check (tiny preset, reduced protocol)")
    p.add_argument("--tiny-crop", type=int, default=64, help="--tiny: central crop of val/test images (64)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/run, OUT/pred and results of a former run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    tiny = args.tiny
    defaults = {
        "train_minutes": 3.0 if tiny else 13.0,
        "generations": 4 if tiny else PAPER_PROTOCOL[0],
        "steps": 10 if tiny else PAPER_PROTOCOL[1],
        "val_every": 0 if tiny else 1000,
        "device": "cpu" if tiny else ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    run_dir, pred_dir, metrics_dir = out / "run", out / "pred", out / "metrics"
    old = [p for p in (run_dir, pred_dir, metrics_dir, out / "results.json") if p.exists()]
    if old and not args.overwrite:
        raise UserError(
            f"{out}: holds a former run ({', '.join(p.name for p in old)}); pass --overwrite or choose another --out"
        )
    for p in old:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (pass --device cpu or --tiny)")
    if not args.tiny and device.type != "cuda":
        log("WARNING: the full benchmark on a CPU takes days; use --tiny for a pipeline check")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # 1. data view
    split = build_view(
        args.data, out, args.val_images, args.seed, args.tiny_crop if args.tiny else None, args.test_images
    )
    view = out / "data"
    log(
        f"data view {view}: {len(split['train'])} train, {len(split['val'])} val ({', '.join(split['val'])}), "
        f"{len(split['test'])} test"
    )

    # 2. training
    cfg = make_config(args)
    t0 = time.time()
    summary = train(view, run_dir, cfg, device=str(device), progress=not args.quiet)
    t_train = time.time() - t0
    rows = RunLog(run_dir, enabled=False).rows()
    plot_curves(rows, out / "curves.png")
    train_rows = [r for r in rows if r.get("kind") == "train"]
    log(
        f"trained {summary['step']} steps in {summary['elapsed_s'] / 60:.1f} min ({summary['stopped_by']}); "
        f"best validation {summary['best']}"
    )

    # 3. sampler cost
    model = SegDiff.load(run_dir, weights="best", device=device)
    tile = model.config.data.size
    first = sorted((view / "test" / "images").iterdir())[0]
    image = torch.from_numpy(read_image(first)).permute(2, 0, 1)[None].to(device)
    h, w = image.shape[-2:]
    n_windows = len(windows(h, w, tile, model.config.data.tile_stride or tile))
    window = model.normalize(image)[..., :tile, :tile]
    want_bg = args.batch_generations or (n_windows * args.generations if device.type == "cuda" else 30)
    per_batch = fit_batch_generations(model, window, want_bg) if device.type == "cuda" else want_bg
    cost = SamplerCost(model, window, probe_steps=10 if device.type == "cuda" else 2)
    n_test = len(split["test"])

    # 4. protocol
    G, K, choice = choose_protocol(args, cost, n_test, n_windows, per_batch, t_start)
    log(choice["reason"])

    # 5. prediction
    t0 = time.time()
    pred = predict_folder(
        model,
        view / "test" / "images",
        pred_dir,
        batch_images=1,
        overwrite=True,
        progress=not args.quiet,
        generations=G,
        steps=K,
        batch_generations=per_batch,
        seed=args.seed,
    )
    t_pred = time.time() - t0
    log(
        f"predicted {pred['predicted']} test images in {t_pred / 60:.1f} min "
        f"(estimated {choice['estimate_s'] / 60:.1f} min)"
    )

    # 6. evaluation and figures
    scores = evaluate_dirs(pred_dir, view / "test", out=metrics_dir / "summary.json")
    import csv

    with open(metrics_dir / "summary_per_image.csv") as fh:
        per_image = {r["stem"]: {k: float(r[k]) for k in ("f1", "iou")} for r in csv.DictReader(fh)}
    show = sorted(split["test"])[: args.figure_images]
    test_figure(out / "figure.png", view, pred_dir, show, per_image)
    shutil.copy(metrics_dir / "summary_reliability.png", out / "reliability.png")
    reference = threshold_baseline(view)
    log(
        f"reference, best global grey threshold chosen on train: Dice {reference['dice_percent']:.2f} %, "
        f"IoU {reference['iou_percent']:.2f} % on the same test images ({reference['rule']})"
    )

    best = summary["best"]
    ours = {"dice": 100 * scores["f1"], "iou": 100 * scores["iou"]}
    opts = model.sampling_options(generations=G, steps=K, batch_generations=per_batch, seed=args.seed)
    result = {
        "benchmark": "MoNuSeg (issue 3)",
        "label": PIPELINE_LABEL if args.tiny else "MoNuSeg test split, the paper's quadrant protocol",
        "test": {
            "dice_percent": ours["dice"],
            "iou_percent": ours["iou"],
            "dice_pooled_percent": 100 * scores["f1_pooled"],
            "iou_pooled_percent": 100 * scores["iou_pooled"],
            "boundf_percent": 100 * scores["boundf"],
            "wcov_paper_percent": 100 * scores["wcov"],
            "calibration": {k: scores["calibration"][k] for k in ("mean", "stderr", "pooled", "ece")},
            "n_images": scores["n_images"],
            "averaging": "per-image Dice (F1) and IoU of the foreground, averaged over the test images "
            "(as the paper's tables); pooled: over all test pixels",
            "empty_mask_policy": scores["policy"]["mode"],
        },
        "reference_global_threshold": reference,
        "protocol": {
            "preset": model.config.preset if not args.tiny else "tiny (pipeline check)",
            "test_images": split["test"],
            "test_resolution": [int(h), int(w)],
            "test_input": (
                f"central {args.tiny_crop}x{args.tiny_crop} crop of each 512x512 test image"
                if args.tiny
                else "the full 512x512 test image"
            ),
            "window": tile,
            "stride": model.config.data.tile_stride or tile,
            "windows_per_image": n_windows,
            "g_per_window": True,
            "generations": G,
            "sampling_steps": K,
            "T": model.config.diffusion.steps,
            "sampler": opts.sampler,
            "variance": opts.variance,
            "clip_x0": opts.clip_x0,
            "amp": "bf16" if device.type == "cuda" else "fp32",
            "seed": args.seed,
            "batch_generations": per_batch,
            "choice": choice,
            "weights": Path(getattr(model, "weights_file", "")).name,
            "mask": "mean over generations of clamp((x0 + 1) / 2) >= 0.5",
        },
        "training": {
            "steps": summary["step"],
            "seconds": summary["elapsed_s"],
            "minutes_budget": args.train_minutes,
            "stopped_by": summary["stopped_by"],
            "batch_size": cfg.train.batch_size,
            "lr": cfg.train.lr,
            "steps_per_second": summary["step"] / max(summary["elapsed_s"], 1e-9),
            "final_loss": train_rows[-1]["loss"] if train_rows else None,
            "best_validation": best,
            "val_every": cfg.train.val_every,
            "validation": f"{len(split['val'])} held-out training images, {cfg.train.val_generations} "
            f"generations x {cfg.train.val_steps} steps; the better of raw and EMA weights is kept",
            "train_images": split["train"],
            "val_images": split["val"],
            "crop": cfg.data.augment.crop,
            "augmentation": asdict(cfg.data.augment),
            "parameters_M": sum(p.numel() for p in model.net.parameters()) / 1e6,
        },
        "sampler_cost": {"seconds_per_call": cost.measured, "probe_steps": cost.probe_steps},
        "seconds": {"train_call": t_train, "predict": t_pred, "total": time.time() - t_start},
        "environment": environment(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "files": [
            "results.json",
            "curves.png",
            "figure.png",
            "reliability.png",
            "metrics/summary.json",
            "metrics/summary_per_image.csv",
        ],
    }
    if not args.tiny:
        result["paper_table3"] = PAPER_TABLE3
        result["gap_to_paper_segdiff"] = {k: ours[k] - PAPER_TABLE3["SegDiff (paper)"][k] for k in ours}
    result["seconds"]["total"] = time.time() - t_start
    (out / "results.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    log(
        f"{result['label']}: Dice {ours['dice']:.2f} %, IoU {ours['iou']:.2f} % over {scores['n_images']} test "
        f"images; total {result['seconds']['total'] / 60:.1f} min -> {out / 'results.json'}"
    )
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
