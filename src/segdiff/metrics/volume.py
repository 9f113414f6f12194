"""3D scores of label volumes (`segdiff evaluate --pred DIR --gt labelsTs/`), per case and per class:
Dice, IoU and the 95th-percentile Hausdorff distance in mm, written as nnU-Net v2's summary.json
(docs/metrics.md, "Volumes").

- Dice = 2 TP / (2 TP + FP + FN), IoU = TP / (TP + FP + FN), per foreground label, voxels of the ignore label
  left out. A case where the class is absent from both reference and prediction scores NaN (0 / 0), as
  nnU-Net's evaluate_predictions does, and NaN is left out of the means over cases (nnU-Net's nanmean);
  `foreground_mean` is the mean over the labels' means. NaN is written as null (strict JSON).
- HD95 (mm): the surfaces are the mask voxels with a 6-neighbour outside the mask (or on the volume's
  border); the distances from each surface voxel of one mask to the nearest surface voxel of the other are
  Euclidean in mm (scipy's distance transform with `sampling` = the voxel spacing); HD95 is the larger of
  the two directed 95th percentiles (as MONAI's compute_hausdorff_distance with percentile 95). Both
  masks empty: NaN. One empty: the diagonal of the volume in mm (the largest distance there can be), so
  that a missed or hallucinated structure is penalised, not dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..classset import ClassSet
from ..data.nnunet import labels_to_classes
from ..data.volume import read_labels_volume
from ..data.volume_io import VOLUME_ENDINGS, ending_of, read_info, strip_ending
from ..errors import DataError, UserError
from .files import write_rows_csv, write_summary

METRICS = ("Dice", "IoU", "HD95", "TP", "FP", "FN", "n_pred", "n_ref")


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of `mask` with a 6-neighbour outside it (outside the volume counts as outside)."""
    inner = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~inner


def hd95(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """95th-percentile Hausdorff distance in mm between two boolean masks (module docstring)."""
    if not pred.any() and not ref.any():
        return math.nan
    if not pred.any() or not ref.any():
        return float(np.sqrt(np.sum((np.asarray(pred.shape) * np.asarray(spacing, np.float64)) ** 2)))
    sp, sr = surface(pred), surface(ref)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(to_ref[sp], 95), np.percentile(to_pred[sr], 95)))


def score_case(pred: np.ndarray, ref: np.ndarray, K: int, spacing) -> dict[int, dict]:
    """Class indices [i, j, k] (ref: IGNORE_INDEX or >= K where ignored) -> {class index: metrics}, k = 1..K-1."""
    keep = ref < K
    out = {}
    for k in range(1, K):
        p, r = (pred == k) & keep, (ref == k) & keep
        tp, fp, fn = int((p & r).sum()), int((p & ~r).sum()), int((~p & r).sum())
        den = 2 * tp + fp + fn
        out[k] = {
            "Dice": 2 * tp / den if den else math.nan,
            "IoU": tp / (tp + fp + fn) if den else math.nan,
            "HD95": hd95(p, r, spacing),
            "TP": tp,
            "FP": fp,
            "FN": fn,
            "n_pred": tp + fp,
            "n_ref": tp + fn,
        }
    return out


def nan_mean(values) -> float:
    v = [x for x in values if not math.isnan(x)]
    return sum(v) / len(v) if v else math.nan


def _json(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json(v) for v in x]
    return x


def volume_files(folder: Path) -> dict[str, Path]:
    """case -> label volume file of `folder` (top level; hidden files skipped)."""
    return {
        strip_ending(p): p
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and not p.name.startswith(".") and ending_of(p) in VOLUME_ENDINGS
    }


def is_volume_folder(folder: Path | str) -> bool:
    folder = Path(folder)
    return folder.is_dir() and bool(volume_files(folder))


def find_labels(pred: Path, gt: Path, dataset_json: Path | None = None) -> ClassSet:
    """The labels: `dataset_json`, else PRED/dataset.json (written by predict), else the data set's beside GT."""
    for path in (dataset_json, pred / "dataset.json", gt.parent / "dataset.json"):
        if path is not None and Path(path).is_file():
            try:
                labels = json.loads(Path(path).read_text()).get("labels")
            except (OSError, ValueError, AttributeError) as exc:
                raise DataError(f"{path}: cannot read labels ({str(exc)[:200]})") from None
            return labels_to_classes(labels, str(path))
    raise UserError(f"{pred}: no dataset.json with the labels here or beside {gt}; pass --dataset-json FILE")


def evaluate_volumes(pred: Path | str, gt: Path | str, out: Path | str | None = None, dataset_json=None) -> dict:
    """Score every reference case of `gt` against its prediction in `pred` (a missing prediction is an error
    naming it); writes summary.json (to `out`, default PRED/summary.json) and a per-case CSV beside it."""
    pred, gt = Path(pred), Path(gt)
    classes = find_labels(pred, gt, dataset_json)
    refs, preds = volume_files(gt), volume_files(pred)
    if not refs:
        raise DataError(f"{gt}: no label volumes ({', '.join(VOLUME_ENDINGS)})")
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise DataError(f"{pred}: no prediction for case {missing[0]} ({len(missing)} missing) of {gt}")
    K, per_case = classes.K, []
    for case, ref_path in refs.items():
        ref_info, pred_info = read_info(ref_path), read_info(preds[case])
        problem = ref_info.same_grid(pred_info)
        if problem:
            raise DataError(f"{preds[case]}: prediction's {problem}")
        ref = read_labels_volume(ref_path, classes)
        p = read_labels_volume(preds[case], classes)
        scores = score_case(p, ref, K, ref_info.spacing)
        per_case.append(
            {
                "reference_file": str(ref_path),
                "prediction_file": str(preds[case]),
                "metrics": {str(classes.values[k]): m for k, m in scores.items()},
            }
        )
    keys = [str(classes.values[k]) for k in range(1, K)]
    mean = {k: {m: nan_mean([c["metrics"][k][m] for c in per_case]) for m in METRICS} for k in keys}
    summary = {
        "metric_per_case": per_case,
        "mean": mean,
        "foreground_mean": {m: nan_mean([mean[k][m] for k in keys]) for m in METRICS},
        "labels": {str(v): n for n, v in zip(classes.names, classes.values)},
        "cases": len(per_case),
    }
    target = Path(out) if out is not None else pred / "summary.json"
    write_summary(target, _json(summary))
    names = dict(zip((str(v) for v in classes.values), classes.names))
    rows = [
        {"case": strip_ending(c["reference_file"]), "label": k, "name": names[k], **{x: m[x] for x in METRICS}}
        for c in per_case
        for k, m in c["metrics"].items()
    ]
    write_rows_csv(target.with_name(target.stem + "_per_case.csv"), rows)
    return summary


def format_volume_table(summary: dict) -> str:
    lines = [f"{summary['cases']} case(s); mean over cases (NaN left out, nnU-Net's convention)"]
    lines.append(f"{'label':<20} {'Dice':>8} {'IoU':>8} {'HD95 mm':>9}")
    for k, m in summary["mean"].items():
        name = f"{k} {summary['labels'][k]}"
        lines.append(f"{name:<20} {m['Dice']:>8.4f} {m['IoU']:>8.4f} {m['HD95']:>9.3f}")
    f = summary["foreground_mean"]
    lines.append(f"{'foreground mean':<20} {f['Dice']:>8.4f} {f['IoU']:>8.4f} {f['HD95']:>9.3f}")
    return "\n".join(lines)
