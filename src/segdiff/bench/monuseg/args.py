"""The command line of `python -m segdiff.bench.monuseg` and its checks (a UserError before any work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...config import COMPILE_MODES, SAMPLERS
from ...errors import UserError


def _description() -> str:
    from . import __doc__ as doc  # the package's docstring, whose first paragraph says what the benchmark does

    return (doc or "").split("\n\n")[0]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m segdiff.bench.monuseg",
        description=_description(),
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
    p.add_argument("--compile", choices=COMPILE_MODES, help="torch.compile the training step (= segdiff train's)")
    p.add_argument("--sampler", choices=SAMPLERS, help="with --generations and --steps: skip the grid")
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
