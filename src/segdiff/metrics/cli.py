"""The `segdiff evaluate` subcommand; the top-level CLI registers it with `add_parser(subparsers)`."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .evaluate import evaluate_dirs, format_table


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
        "--classes",
        type=Path,
        metavar="FILE",
        help="classes.json of multi-class masks (default: GT's data root, then PRED/classes.json written by predict)",
    )
    p.add_argument(
        "--checkpoint", type=Path, metavar="RUN", help="take the classes of multi-class masks from this run's config"
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, return the exit status (0). UserError propagates to the top-level CLI."""
    from .evaluate_classes import find_classes, format_class_table

    if find_classes(args.pred, args.gt, args.classes, args.checkpoint) is not None:
        if args.resize_to_gt:
            from ..errors import UserError

            raise UserError("--resize-to-gt: not available for multi-class masks")
        summary = evaluate_dirs(
            pred=args.pred, gt=args.gt, prob=args.prob, out=args.out, classes=args.classes, checkpoint=args.checkpoint
        )
        print(format_class_table(summary))
        return 0
    if not args.resize_to_gt:
        summary = evaluate_dirs(
            pred=args.pred, gt=args.gt, prob=args.prob, out=args.out, paper_compat=args.paper_compat
        )
    else:
        from .resize import resize_to_gt

        with tempfile.TemporaryDirectory(prefix="segdiff-resized-") as tmp:
            resize_to_gt(args.pred, args.gt, Path(tmp), prob=args.prob)
            summary = evaluate_dirs(pred=Path(tmp), gt=args.gt, out=args.out, paper_compat=args.paper_compat)
    print(format_table(summary))
    return 0
