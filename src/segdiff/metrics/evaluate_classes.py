"""`segdiff evaluate` for K classes: label masks against ground truth, with the classes from a
classes.json (ground-truth root, the prediction folder, or --classes) or a run's config (--checkpoint).

Outputs beside OUT (summary.json): <stem>_per_image.csv (per image and class: IoU, Dice, boundary F),
<stem>_confusion.csv and <stem>_confusion.png (pooled pixel counts, rows = ground truth), and with
probability maps <stem>_reliability.png (the predicted class's probability). Definitions: docs/metrics.md.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import tifffile

from ..data.classes import ClassSet, find_classes_json, load_classes_json, read_labels
from ..data.folder import list_files
from ..data.io import MASK_EXTS
from ..errors import DataError, UserError
from .calibration import CalibrationAccumulator
from .classes import plot_confusion, score_classes, summarize_classes


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


def read_class_prob(path: Path, K: int) -> np.ndarray:
    """float32 [K, H, W] class probabilities (a channels-first TIFF as predict writes, or .npy)."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else tifffile.imread(str(path))
    except Exception as exc:  # numpy and tifffile raise many types for a corrupt file
        raise DataError(f"{path}: cannot read probability map ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[0] != K:
        raise DataError(f"{path}: expected class probabilities [{K}, H, W] (one plane per class), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < -1e-4 or arr.max() > 1 + 1e-4:
        raise DataError(f"{path}: class probabilities must be finite and within [0, 1]")
    return np.clip(arr, 0, 1)


def evaluate_class_dirs(
    mask_dir: Path,
    gt_dir: Path,
    classes: ClassSet,
    prob_dir: Path | None = None,
    out: Path | None = None,
    reliability_png: bool = True,
) -> dict:
    from .evaluate import _check_paired, _check_size, _write_atomic, output_paths

    K, names = classes.K, list(classes.names)
    pred_files = list_files(mask_dir, MASK_EXTS, "predicted mask")
    gt_files = list_files(gt_dir, MASK_EXTS, "ground-truth mask")
    _check_paired(pred_files, gt_files, "ground-truth mask", gt_dir)
    _check_paired(gt_files, pred_files, "predicted mask", mask_dir)
    prob_files = None
    if prob_dir is not None:
        prob_files = {
            p.stem: p for p in sorted(Path(prob_dir).iterdir()) if p.suffix.lower() in (".tif", ".tiff", ".npy")
        }
        _check_paired(gt_files, prob_files, "probability map", prob_dir)
    calib = CalibrationAccumulator() if prob_files is not None else None
    scores, rows, ignored = [], [], 0
    for stem in sorted(gt_files):
        g = read_labels(gt_files[stem], classes)
        p = read_labels(pred_files[stem], classes)
        _check_size(p, pred_files[stem], g, gt_files[stem])
        if (p >= K).any():
            raise DataError(f"{pred_files[stem]}: the prediction holds the ignore label; predictions must be classes")
        sc = score_classes(p, g, K)
        scores.append(sc)
        valid = g < K
        ignored += int((~valid).sum())
        row = {"stem": stem}
        fg_iou = sc["iou"][1:][np.isfinite(sc["iou"][1:])]
        row["miou_fg"] = float(fg_iou.mean()) if fg_iou.size else ""
        for k, n in enumerate(names):
            for m in ("iou", "dice", "boundf"):
                row[f"{m}[{n}]"] = "" if not np.isfinite(sc[m][k]) else float(sc[m][k])
        if calib is not None:
            q = read_class_prob(prob_files[stem], K)
            if q.shape[1:] != g.shape:
                raise DataError(f"{prob_files[stem]}: size {q.shape[2]}x{q.shape[1]} differs from {gt_files[stem]}")
            conf = np.take_along_axis(q, p[None].astype(np.int64), 0)[0]
            if valid.any():
                row["calibration"] = calib.add(conf[valid], (p == g)[valid])
        rows.append(row | {"pred_file": str(pred_files[stem]), "gt_file": str(gt_files[stem])})
    if not rows:
        raise DataError(f"{gt_dir}: no images to evaluate")
    summary = summarize_classes(scores, names)
    summary["ignored_pixels"] = ignored
    summary["calibration"] = calib.summary() if calib is not None and calib.n_images else None
    summary["inputs"] = {"pred": str(mask_dir), "gt": str(gt_dir), "prob": None if prob_dir is None else str(prob_dir)}
    summary["class_set"] = classes.to_json()
    if out is not None:
        out = Path(out)
        paths = output_paths(out)
        base = out.with_name(out.stem)
        out.parent.mkdir(parents=True, exist_ok=True)
        fields = list(dict.fromkeys(k for r in rows for k in r))

        def write_csv(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)

        _write_atomic(paths["per_image_csv"], write_csv)
        cm = np.asarray(summary["confusion"])
        cm_csv = Path(f"{base}_confusion.csv")
        cm_png = Path(f"{base}_confusion.png")

        def write_cm(tmp: Path) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["ground truth \\ predicted", *names])
                for n, r in zip(names, cm):
                    w.writerow([n, *map(int, r)])

        _write_atomic(cm_csv, write_cm)
        _write_atomic(cm_png, lambda tmp: plot_confusion(cm, names, tmp))
        written = {
            "summary": str(out),
            "per_image_csv": str(paths["per_image_csv"]),
            "confusion_csv": str(cm_csv),
            "confusion_png": str(cm_png),
            "reliability_png": None,
        }
        if calib is not None and reliability_png and calib.n_images:
            title = "Reliability of the predicted class's probability"
            _write_atomic(paths["reliability_png"], lambda tmp: calib.plot_reliability(tmp, title))
            written["reliability_png"] = str(paths["reliability_png"])
        summary["outputs"] = written
        text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
        _write_atomic(out, lambda tmp: tmp.write_text(text))
    return summary


def format_class_table(summary: dict) -> str:
    n = summary["n_images"]

    def pct(v) -> str:
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    lines = [
        f"{n} image{'s' if n != 1 else ''}, {len(summary['classes'])} classes, background: {summary['background']}"
    ]
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
