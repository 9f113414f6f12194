"""The files of an evaluation: the folders it reads (predictions and ground truth, paired by stem) and the
files it writes beside the summary, each atomically (segdiff/atomic.py). Used by `evaluate_dirs` (binary
masks) and `evaluate_class_dirs` (K classes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..atomic import atomic_write, atomic_write_text
from ..data.folder import check_paired, list_files
from ..data.io import MASK_EXTS
from ..errors import DataError
from .calibration import CalibrationAccumulator


def resolve_pred(pred: Path, prob: Path | None = None) -> tuple[Path, Path | None]:
    """(mask folder, probability folder or None) for a mask folder or a `segdiff predict` output."""
    pred = Path(pred)
    if not pred.is_dir():
        raise DataError(f"{pred}: prediction folder not found")
    mask_dir = pred / "masks" if (pred / "masks").is_dir() else pred
    if prob is None and (pred / "prob").is_dir():
        prob = pred / "prob"
    return mask_dir, None if prob is None else Path(prob)


def input_folders(mask_dir: Path, gt_dir: Path, prob_dir: Path | None, unc_dir: Path | None) -> dict:
    """A summary's "inputs": the folders scored, absolute, so that a reader such as `segdiff serve --eval`
    finds the files again (uncertainty: the maps of a `segdiff predict` output folder, or None)."""
    return {
        "pred": str(Path(mask_dir).resolve()),
        "gt": str(Path(gt_dir).resolve()),
        "prob": None if prob_dir is None else str(Path(prob_dir).resolve()),
        "uncertainty": None if unc_dir is None else str(Path(unc_dir).resolve()),
    }


def resolve_gt(gt: Path) -> Path:
    """The ground-truth mask folder: GT/masks for a data split folder, else GT itself."""
    gt = Path(gt)
    return gt / "masks" if (gt / "masks").is_dir() else gt


def pair_masks(mask_dir: Path, gt_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(predicted, ground-truth) mask files by stem; a file of either folder without a partner in the
    other is a DataError naming it."""
    pred_files = list_files(mask_dir, MASK_EXTS, "predicted mask")
    gt_files = list_files(gt_dir, MASK_EXTS, "ground-truth mask")
    check_paired(pred_files, gt_files, "ground-truth mask", gt_dir)
    check_paired(gt_files, pred_files, "predicted mask", mask_dir)
    return pred_files, gt_files


def output_paths(out: Path) -> dict[str, Path]:
    """summary.json path -> {summary, per_image_csv, reliability_png}, the latter two beside it."""
    return {
        "summary": out,
        "per_image_csv": out.with_name(f"{out.stem}_per_image.csv"),
        "reliability_png": out.with_name(f"{out.stem}_reliability.png"),
    }


def write_rows_csv(path: Path, rows: list[dict]) -> None:
    """Rows (dicts) as a CSV with a header: every key of any row, in order of first appearance; a row
    without a key leaves its cell empty. File names that are not valid UTF-8 are written as they are."""
    fields = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)


def write_reliability(path: Path, calib: CalibrationAccumulator, title: str) -> None:
    """The reliability diagram of the pooled calibration bins as a PNG."""
    atomic_write(path, lambda tmp: calib.plot_reliability(tmp, title))


def write_summary(path: Path, summary: dict) -> None:
    """summary.json, written last by an evaluation. allow_nan=False: a NaN would be a bug in a metric, and
    JSON has no NaN; fail loudly instead."""
    atomic_write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
