"""`segdiff evaluate`: score a folder of predicted masks (and probability maps) against ground truth.

Folders accepted:
  pred  a folder of mask files, or a `segdiff predict` output folder PRED/{masks,prob}/ (PRED/masks is used
        when it exists, and PRED/prob when no probability folder is given);
  gt    a folder of mask files, or a data split folder ROOT/<split>/ with a masks/ subfolder;
  prob  probability maps <stem>.tif/.tiff (float in [0, 1]; integer TIFFs are scaled by their dtype's
        maximum), else <stem>.npy, else <stem>.png (8-bit, /255), in that order of preference.
Files pair by stem; an unpaired file or a size mismatch is a DataError naming the file(s).

Images are read and scored one at a time; only per-image rows (a few numbers each) and the calibration
bin sums are kept, so the dataset never sits in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.folder import check_paired, check_same_size, list_prob_files
from ..data.io import read_mask, read_prob
from ..errors import UserError
from .boundary import TOLERANCES_PX, boundary_f_per_tolerance
from .calibration import CalibrationAccumulator
from .evaluate_classes import evaluate_class_dirs, find_classes
from .files import (
    input_folders,
    output_paths,
    pair_masks,
    resolve_gt,
    resolve_pred,
    write_reliability,
    write_rows_csv,
    write_summary,
)
from .overlap import Confusion, confusion, f1_from_confusion, f1_pooled, iou_from_confusion, iou_pooled
from .uncertainty import ErrorAUROCAccumulator, confidence_uncertainty
from .wcov import wcov_paper, weighted_coverage

POLICY = {
    "default": (
        "both masks empty: IoU = F1 = WCov = weighted coverage = 1; one empty: 0. "
        "BoundF follows DAVIS: both boundaries empty: F = 1; one empty: F = 0."
    ),
    "paper_compat": (
        "as the authors' code: both masks empty: IoU = F1 = 0 (sklearn zero_division), WCov = 0 (their "
        "WCov_metric divides by zero there; each such image is listed in warnings); weighted coverage 1; "
        "one empty: 0. BoundF follows DAVIS as in default mode."
    ),
}


def _stems(stems: list[str], limit: int = 5) -> str:
    return ", ".join(stems[:limit]) + (f", ... ({len(stems)} in all)" if len(stems) > limit else "")


def score_pair(pred: np.ndarray, gt: np.ndarray, paper_compat: bool = False) -> dict:
    """Every mask metric of one image pair (pred, gt: bool [H, W]) and its pixel counts, as a flat dict:
    iou, f1, wcov, weighted_coverage, boundf, boundf_<d>px, gt_pixels, pred_pixels, tp, fp, fn."""
    c = confusion(pred, gt)
    bf = boundary_f_per_tolerance(pred, gt, TOLERANCES_PX)
    return {
        "iou": iou_from_confusion(c, paper_compat),
        "f1": f1_from_confusion(c, paper_compat),
        "wcov": wcov_paper(pred, gt, paper_compat),
        "weighted_coverage": weighted_coverage(pred, gt),
        "boundf": float(np.mean(list(bf.values()))),
        **{f"boundf_{d}px": v for d, v in bf.items()},
        "gt_pixels": c.tp + c.fn,
        "pred_pixels": c.tp + c.fp,
        "tp": c.tp,
        "fp": c.fp,
        "fn": c.fn,
    }


def summarize(rows: list[dict], paper_compat: bool = False, calibration: CalibrationAccumulator | None = None) -> dict:
    """Dataset summary from `score_pair` rows (each with a "stem"): per-image means, pooled IoU/F1,
    BoundF per tolerance, counts, policy and warnings; calibration from the accumulator, if any."""
    if not rows:
        raise ValueError("no images to summarize")

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    confusions = [Confusion(r["tp"], r["fp"], r["fn"]) for r in rows]
    gt_empty = [r["stem"] for r in rows if r["gt_pixels"] == 0]
    both_empty = [r["stem"] for r in rows if r["gt_pixels"] == 0 and r["pred_pixels"] == 0]
    warnings = []
    if gt_empty:
        warnings.append(
            f"{len(gt_empty)} image(s) have an empty ground-truth mask ({_stems(gt_empty)}); "
            "they are scored by the empty-mask policy"
        )
    if paper_compat and both_empty:
        warnings.append(
            f"paper_compat: {len(both_empty)} image(s) have empty prediction and ground truth "
            f"({_stems(both_empty)}); the authors' WCov_metric divides by zero there, counted as WCov = 0"
        )
    mode = "paper_compat" if paper_compat else "default"
    return {
        "n_images": len(rows),
        "iou": mean("iou"),
        "f1": mean("f1"),
        "iou_pooled": iou_pooled(confusions, paper_compat),
        "f1_pooled": f1_pooled(confusions, paper_compat),
        "wcov": mean("wcov"),
        "weighted_coverage": mean("weighted_coverage"),
        "boundf": mean("boundf"),
        "boundf_px": {str(d): mean(f"boundf_{d}px") for d in TOLERANCES_PX},
        "calibration": calibration.summary() if calibration is not None else None,
        "counts": {
            "images": len(rows),
            "gt_empty": len(gt_empty),
            "pred_empty": sum(r["pred_pixels"] == 0 for r in rows),
            "both_empty": len(both_empty),
            "gt_pixels": sum(r["gt_pixels"] for r in rows),
            "pred_pixels": sum(r["pred_pixels"] for r in rows),
        },
        "policy": {"mode": mode, "empty_masks": POLICY[mode]},
        "warnings": warnings,
    }


def evaluate_dirs(
    pred: Path,
    gt: Path,
    prob: Path | None = None,
    out: Path | None = None,
    paper_compat: bool = False,
    reliability_png: bool = True,
    classes: Path | None = None,
    checkpoint: Path | None = None,
) -> dict:
    """Score every predicted mask against its ground truth; return (and with `out`, write) the summary.

    Multi-class data (a classes.json in the ground-truth root or the prediction folder, `classes` = a
    classes.json, or `checkpoint` = a multi-class run folder) is scored by `evaluate_class_dirs`.
    Metric values are fractions in [0, 1]. With `out` (a file path such as results/summary.json) also
    writes <out stem>_per_image.csv and, with probabilities and `reliability_png`, <out stem>_reliability.png
    beside it; summary.json is written last, each file atomically.
    """
    mask_dir, prob_dir = resolve_pred(pred, prob)
    gt_dir = resolve_gt(gt)
    if out is not None:
        out = Path(out)
        if out.is_dir() or out.suffix.lower() != ".json":
            raise UserError(f"{out}: --out must be a .json file path such as results/summary.json")
    # the uncertainty maps of a `segdiff predict` output folder, when there are any (named in the summary)
    unc_dir = Path(pred) / "uncertainty"
    unc_dir = unc_dir if mask_dir != Path(pred) and unc_dir.is_dir() else None
    class_set = find_classes(pred, gt, classes, checkpoint)
    if class_set is not None:  # K classes (docs/metrics.md, "Multi-class")
        return evaluate_class_dirs(mask_dir, gt_dir, class_set, prob_dir, out, reliability_png, unc_dir)
    pred_files, gt_files = pair_masks(mask_dir, gt_dir)
    prob_files = None
    if prob_dir is not None:  # every probability map pairs with a mask, both ways (K classes: one way)
        prob_files = list_prob_files(prob_dir)
        check_paired(prob_files, gt_files, "ground-truth mask", gt_dir)
        check_paired(gt_files, prob_files, "probability map", prob_dir)

    rows: list[dict] = []
    calib = CalibrationAccumulator() if prob_files is not None else None
    # issue 20: does the uncertainty map (a `segdiff predict` folder's) point at the errors; and, for any
    # probability map, does its own confidence (the one-pass baseline's only uncertainty)
    unc_files = _uncertainty_files(unc_dir, gt_files) if unc_dir is not None else None
    unc_auroc = ErrorAUROCAccumulator() if unc_files is not None else None
    conf_auroc = ErrorAUROCAccumulator() if prob_files is not None else None
    for stem in sorted(gt_files):
        g, p = read_mask(gt_files[stem]), read_mask(pred_files[stem])
        check_same_size(p, pred_files[stem], g, gt_files[stem])
        row = {"stem": stem, **score_pair(p, g, paper_compat)}
        if calib is not None:
            q = read_prob(prob_files[stem])
            check_same_size(q, prob_files[stem], g, gt_files[stem])
            row["calibration"] = calib.add(q, g)
            row["confidence_auroc"] = conf_auroc.add(confidence_uncertainty(q), p != g)
        if unc_auroc is not None:
            u = read_prob(unc_files[stem])
            check_same_size(u, unc_files[stem], g, gt_files[stem])
            row["uncertainty_auroc"] = unc_auroc.add(u, p != g)
        rows.append(row | {"pred_file": str(pred_files[stem]), "gt_file": str(gt_files[stem])})

    summary = summarize(rows, paper_compat, calib)
    summary["uncertainty_auroc"] = unc_auroc.summary() if unc_auroc is not None else None
    summary["confidence_auroc"] = conf_auroc.summary() if conf_auroc is not None else None
    # the folders scored (absolute), so that a reader such as `segdiff serve --eval` finds the files again
    summary["inputs"] = input_folders(mask_dir, gt_dir, prob_dir, unc_dir)
    if out is not None:
        summary["outputs"] = _write_outputs(out, summary, rows, calib if reliability_png else None)
    return summary


def _uncertainty_files(unc_dir: Path, gt_files: dict[str, Path]) -> dict[str, Path] | None:
    """<stem>.tif uncertainty maps (float, written by segdiff predict) for every ground-truth stem, or None
    when the folder has none; a folder with some but not all of them is an error naming the first missing."""
    if not unc_dir.is_dir():
        return None
    found = {p.stem: p for p in unc_dir.glob("*.tif")}
    if not found:
        return None
    missing = sorted(set(gt_files) - set(found))
    if missing:
        raise UserError(f"{unc_dir}: no uncertainty map {missing[0]}.tif for the mask {gt_files[missing[0]]}")
    return found


def _write_outputs(out: Path, summary: dict, rows: list[dict], calib: CalibrationAccumulator | None) -> dict:
    paths = output_paths(out)
    write_rows_csv(paths["per_image_csv"], rows)
    written = {"summary": str(out), "per_image_csv": str(paths["per_image_csv"]), "reliability_png": None}
    if calib is not None:
        n = summary["n_images"]
        write_reliability(paths["reliability_png"], calib, f"Reliability, pooled over {n} image{'s' if n != 1 else ''}")
        written["reliability_png"] = str(paths["reliability_png"])
    write_summary(out, {**summary, "outputs": written})
    return written


def format_table(summary: dict) -> str:
    """The summary as a plain-text table; overlap metrics in percent like the paper's tables."""
    n = summary["n_images"]
    lines = [f"{n} image{'s' if n != 1 else ''}, empty-mask policy: {summary['policy']['mode']}"]

    def row(name: str, value: str) -> None:
        lines.append(f"  {name:<34}{value}")

    row("F1 / Dice, per-image mean", f"{100 * summary['f1']:6.2f} %")
    row("IoU, per-image mean (paper mIoU)", f"{100 * summary['iou']:6.2f} %")
    row("WCov (paper: area ratio)", f"{100 * summary['wcov']:6.2f} %")
    row("Weighted coverage (instances)", f"{100 * summary['weighted_coverage']:6.2f} %")
    row("BoundF, mean of 1-5 px", f"{100 * summary['boundf']:6.2f} %")
    row(
        "  BoundF at " + " / ".join(f"{d}" for d in summary["boundf_px"]) + " px",
        "".join(f"{100 * v:6.2f}" for v in summary["boundf_px"].values()),
    )
    row("F1 / Dice, pooled over pixels", f"{100 * summary['f1_pooled']:6.2f} %")
    row("IoU, pooled over pixels", f"{100 * summary['iou_pooled']:6.2f} %")
    cal = summary.get("calibration")
    if cal:
        row("Calibration score, mean +- s.e.", f"{cal['mean']:8.5f} +- {cal['stderr']:.5f}  (lower is better)")
        row("Calibration score, pooled bins", f"{cal['pooled']:8.5f}")
        row("ECE, pooled bins", f"{cal['ece']:8.5f}")
    for key, name in (("uncertainty_auroc", "uncertainty"), ("confidence_auroc", "confidence")):
        a = summary.get(key)
        if a and a["pooled"] is not None:
            row(f"Error AUROC of {name}, pooled", f"{a['pooled']:8.4f}  (0.5 = no signal)")
    for w in summary.get("warnings", []):
        lines.append(f"warning: {w}")
    for name, path in (summary.get("outputs") or {}).items():
        if path:
            lines.append(f"wrote {name}: {path}")
    return "\n".join(lines)
