"""`segdiff evaluate` for K classes: label masks against ground truth, with the classes from a
classes.json (ground-truth root, the prediction folder, or --classes) or a run's config (--checkpoint).

Outputs beside OUT (summary.json): <stem>_per_image.csv (per image and class: IoU, Dice, boundary F),
<stem>_confusion.csv and <stem>_confusion.png (pooled pixel counts, rows = ground truth), and with
probability maps <stem>_reliability.png (the predicted class's probability). Definitions: docs/metrics.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..data.classes import ClassSet, find_classes_json, load_classes_json, read_labels
from ..data.folder import check_paired, check_same_size
from ..data.io import read_class_prob
from ..errors import DataError, UserError
from .calibration import CalibrationAccumulator
from .classes import plot_confusion, score_classes, summarize_classes
from .files import input_folders, output_paths, pair_masks, write_reliability, write_rows_csv, write_summary

# K-class probability maps are channels-first stacks; predict writes no PNG of them (8-bit would be lossy).
CLASS_PROB_EXTS = (".tif", ".tiff", ".npy")


def find_classes(pred: Path, gt: Path, classes: Path | None = None, checkpoint: Path | None = None):
    """The ClassSet to evaluate with, or None for binary masks: --classes FILE, --checkpoint RUN (its
    config.json), classes.json in the ground-truth folder or up to two levels above it, PRED/classes.json
    (written by `segdiff predict` from the run's config), in that order."""
    if classes is not None:
        return load_classes_json(Path(classes))
    if checkpoint is not None:
        from ..config import RunConfig

        cfg = RunConfig.load(Path(checkpoint) / "config.json")
        found = ClassSet.from_config(cfg.data)
        if found is None:
            raise UserError(f"--checkpoint {checkpoint}: this run is binary (no classes in its config.json)")
        return found
    path = find_classes_json(Path(gt))
    if path is None and (Path(pred) / "classes.json").is_file():
        path = Path(pred) / "classes.json"
    return None if path is None else load_classes_json(path)


def evaluate_class_dirs(
    mask_dir: Path,
    gt_dir: Path,
    classes: ClassSet,
    prob_dir: Path | None = None,
    out: Path | None = None,
    reliability_png: bool = True,
    uncertainty_dir: Path | None = None,
) -> dict:
    """Score K-class label masks against ground truth (docs/metrics.md, "Multi-class"); return (and with
    `out`, write) the summary. Called by `evaluate_dirs`, which resolves the folders and the classes.
    uncertainty_dir: the entropy maps of a `segdiff predict` output, named in the summary's inputs."""
    pred_files, gt_files = pair_masks(mask_dir, gt_dir)
    prob_files = None
    if prob_dir is not None:  # only .tif/.tiff/.npy, and a map without ground truth is ignored
        prob_files = {p.stem: p for p in sorted(Path(prob_dir).iterdir()) if p.suffix.lower() in CLASS_PROB_EXTS}
        check_paired(gt_files, prob_files, "probability map", prob_dir)
    calib = CalibrationAccumulator() if prob_files is not None else None
    scores, rows, ignored = [], [], 0
    for stem in sorted(gt_files):
        prob_file = None if prob_files is None else prob_files[stem]
        sc, row, n_ignored = _score_image(pred_files[stem], gt_files[stem], classes, prob_file, calib)
        scores.append(sc)
        ignored += n_ignored
        rows.append(row | {"pred_file": str(pred_files[stem]), "gt_file": str(gt_files[stem])})
    if not rows:
        raise DataError(f"{gt_dir}: no images to evaluate")
    summary = summarize_classes(scores, list(classes.names), classes.background)
    summary["ignored_pixels"] = ignored
    summary["calibration"] = calib.summary() if calib is not None and calib.n_images else None
    summary["inputs"] = input_folders(mask_dir, gt_dir, prob_dir, uncertainty_dir)
    summary["class_set"] = classes.to_json()
    if out is not None:
        summary["outputs"] = _write_outputs(Path(out), summary, rows, list(classes.names), calib, reliability_png)
        write_summary(Path(out), summary)
    return summary


def _score_image(
    pred_file: Path,
    gt_file: Path,
    classes: ClassSet,
    prob_file: Path | None,
    calib: CalibrationAccumulator | None,
) -> tuple[dict, dict, int]:
    """(score_classes scores, the per-image CSV row, the number of ignored pixels) of one image; with a
    probability map, adds the image's predicted-class probabilities to `calib`."""
    K = classes.K
    g = read_labels(gt_file, classes)
    p = read_labels(pred_file, classes)
    check_same_size(p, pred_file, g, gt_file)
    if (p >= K).any():
        raise DataError(f"{pred_file}: the prediction holds the ignore label; predictions must be classes")
    sc = score_classes(p, g, K)
    valid = g < K
    row = {"stem": gt_file.stem}
    if classes.background is not None:
        fg_iou = sc["iou"][np.arange(K) != classes.background]
        fg_iou = fg_iou[np.isfinite(fg_iou)]
        row["miou_fg"] = float(fg_iou.mean()) if fg_iou.size else ""
    for k, n in enumerate(classes.names):
        for m in ("iou", "dice", "boundf"):
            row[f"{m}[{n}]"] = "" if not np.isfinite(sc[m][k]) else float(sc[m][k])
    if prob_file is not None:
        q = read_class_prob(prob_file, K)
        check_same_size(q[0], prob_file, g, gt_file)
        conf = np.take_along_axis(q, p[None].astype(np.int64), 0)[0]
        if valid.any():
            row["calibration"] = calib.add(conf[valid], (p == g)[valid])
    return sc, row, int((~valid).sum())


def _write_outputs(
    out: Path,
    summary: dict,
    rows: list[dict],
    names: list[str],
    calib: CalibrationAccumulator | None,
    reliability_png: bool,
) -> dict:
    """Write the per-image CSV, the confusion matrix (CSV and PNG) and the reliability diagram beside `out`
    (summary.json, which the caller writes last); returns their paths."""
    paths = output_paths(out)
    base = out.with_name(out.stem)
    write_rows_csv(paths["per_image_csv"], rows)
    cm = np.asarray(summary["confusion"])
    cm_csv = Path(f"{base}_confusion.csv")
    cm_png = Path(f"{base}_confusion.png")
    corner = "ground truth \\ predicted"  # rows = ground truth, columns = predicted
    write_rows_csv(cm_csv, [{corner: n, **dict(zip(names, map(int, r)))} for n, r in zip(names, cm)])
    atomic_write(cm_png, lambda tmp: plot_confusion(cm, names, tmp))
    written = {
        "summary": str(out),
        "per_image_csv": str(paths["per_image_csv"]),
        "confusion_csv": str(cm_csv),
        "confusion_png": str(cm_png),
        "reliability_png": None,
    }
    if calib is not None and reliability_png and calib.n_images:
        write_reliability(paths["reliability_png"], calib, "Reliability of the predicted class's probability")
        written["reliability_png"] = str(paths["reliability_png"])
    return written


def format_class_table(summary: dict) -> str:
    n = summary["n_images"]

    def pct(v) -> str:
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    background = summary["background"] if summary["background"] is not None else summary["foreground_means"]
    lines = [f"{n} image{'s' if n != 1 else ''}, {len(summary['classes'])} classes, background: {background}"]
    lines.append(f"  {'class':<20}{'IoU':>8}{'Dice':>8}{'IoU pool':>10}{'Dice pool':>10}{'BoundF':>8}  (%)")
    for name, c in summary["per_class"].items():
        lines.append(
            f"  {name[:20]:<20}{pct(c['iou']):>8}{pct(c['dice']):>8}{pct(c['iou_pooled']):>10}"
            f"{pct(c['dice_pooled']):>10}{pct(c['boundf']):>8}"
        )
    lines.append(
        f"  {'mean (all)':<20}{pct(summary['miou']):>8}{pct(summary['mdice']):>8}{pct(summary['miou_pooled']):>10}"
        f"{pct(summary['mdice_pooled']):>10}{pct(summary['boundf']):>8}"
    )
    if "miou_fg" in summary:
        lines.append(
            f"  {'mean (foreground)':<20}{pct(summary['miou_fg']):>8}{pct(summary['mdice_fg']):>8}"
            f"{pct(summary['miou_pooled_fg']):>10}{pct(summary['mdice_pooled_fg']):>10}{pct(summary['boundf_fg']):>8}"
        )
    lines.append(f"  pixel accuracy {pct(summary['pixel_accuracy'])} %, ignored pixels {summary['ignored_pixels']}")
    cal = summary.get("calibration")
    if cal:
        lines.append(
            f"  calibration (predicted class): {cal['mean']:.5f} +- {cal['stderr']:.5f}, pooled {cal['pooled']:.5f}, "
            f"ECE {cal['ece']:.5f}"
        )
    for name, path in (summary.get("outputs") or {}).items():
        if path:
            lines.append(f"wrote {name}: {path}")
    return "\n".join(lines)
