"""The `segdiff evaluate` subcommand; the top-level CLI registers it with `add_parser(subparsers)`."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from ..errors import UserError
from .evaluate import evaluate_dirs, format_table
from .evaluate_classes import find_classes, format_class_table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `evaluate` on the top-level parser's subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "evaluate",
        help="score predicted masks (and probability maps) against ground-truth masks",
        description=(
            "Score predicted masks against ground truth: per-image mean IoU and F1 (the paper's mIoU and "
            "F1/Dice), pooled IoU and F1, WCov, weighted coverage, BoundF (1-5 px) and, with probability "
            "maps, the paper's calibration score and ECE. Files pair by stem. See docs/metrics.md."
        ),
    )
    p.add_argument(
        "--pred",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder of predicted masks, or a `segdiff predict` output folder (uses DIR/masks "
        "and, if present, DIR/prob)",
    )
    p.add_argument(
        "--gt",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder of ground-truth masks, or a split folder with a masks/ subfolder (ROOT/test)",
    )
    p.add_argument(
        "--prob",
        type=Path,
        metavar="DIR",
        help="folder of probability maps <stem>.tif/.npy/.png (default: PRED/prob if present)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the summary here (e.g. results/summary.json), with <stem>_per_image.csv and "
        "<stem>_reliability.png beside it",
    )
    p.add_argument(
        "--paper-compat",
        action="store_true",
        help="score empty masks as the authors' code does (both empty: IoU = F1 = WCov = 0)",
    )
    p.add_argument(
        "--resize-to-gt",
        action="store_true",
        help="first resize each prediction (probability map, then threshold 0.5) to its ground-truth mask's "
        "size: the Cityscapes protocol, where masks stay at the native crop size (docs/protocols.md)",
    )
    p.add_argument(
        "--keep-resized",
        type=Path,
        metavar="DIR",
        help="with --resize-to-gt: write the resized predictions here (laid out as `segdiff predict` writes, "
        "with resize.json) instead of a temporary folder removed after scoring",
    )
    p.add_argument(
        "--classes",
        type=Path,
        metavar="FILE",
        help="classes.json of multi-class masks (default: GT's data root, then PRED/classes.json written by predict)",
    )
    p.add_argument(
        "--checkpoint", type=Path, metavar="RUN", help="take the classes of multi-class masks from this run's config"
    )
    p.add_argument(
        "--dataset-json",
        type=Path,
        metavar="FILE",
        help="label volumes (nnU-Net layout): the dataset.json naming the labels (default: PRED's, then GT's data set)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, return the exit status (0). UserError propagates to the top-level CLI."""
    if args.keep_resized is not None and not args.resize_to_gt:
        raise UserError("--keep-resized: only with --resize-to-gt")
    from .volume import evaluate_volumes, format_volume_table, is_volume_folder

    if is_volume_folder(args.gt):  # label volumes (nnU-Net layout): 3D scores per case, summary.json
        print(format_volume_table(evaluate_volumes(args.pred, args.gt, args.out, args.dataset_json)))
        return 0
    if find_classes(args.pred, args.gt, args.classes, args.checkpoint) is not None:
        if args.resize_to_gt:
            raise UserError("--resize-to-gt: not available for multi-class masks")
        summary = evaluate_dirs(
            pred=args.pred, gt=args.gt, prob=args.prob, out=args.out, classes=args.classes, checkpoint=args.checkpoint
        )
        print(format_class_table(summary))
        return 0
    if args.resize_to_gt:
        summary = _evaluate_resized(args)
    else:
        summary = evaluate_dirs(
            pred=args.pred, gt=args.gt, prob=args.prob, out=args.out, paper_compat=args.paper_compat
        )
    print(format_table(summary))
    return 0


def _evaluate_resized(args: argparse.Namespace) -> dict:
    """--resize-to-gt: resize the predictions into --keep-resized DIR (or a temporary folder), then score them."""
    from .resize import resize_to_gt  # torch: imported only when resizing, so that --help stays fast

    with contextlib.ExitStack() as stack:
        folder = args.keep_resized
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segdiff-resized-")))
        s = resize_to_gt(args.pred, args.gt, folder, prob=args.prob)
        if args.keep_resized is not None:
            print(f"{s['resized']} of {s['images']} prediction(s) resized to the ground truth's size -> {s['out']}")
        return evaluate_dirs(pred=folder, gt=args.gt, out=args.out, paper_compat=args.paper_compat)
