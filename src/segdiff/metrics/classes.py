"""Metrics for K classes (docs/metrics.md, "Multi-class"): per-class IoU and Dice per image and pooled,
their means over classes with and without the background class (the `_fg` means, only where the classes
name a background: segdiff.classset), the confusion matrix,
boundary F per class, and calibration of the predicted class's probability.

Label maps are [H, W] class indices 0..K-1; any other value in the ground truth (IGNORE_INDEX) is the
ignore label and is left out of every count. A class absent from both prediction and ground truth of an
image has no IoU, Dice or boundary F for that image (NaN): per-image means average over the images where
the class is present in either; a class present in no image has no score (null in summary.json) and is
left out of the means over classes.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from .boundary import TOLERANCES_PX, score_from_bmaps, seg2bmap


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, K: int) -> np.ndarray:
    """[K, K] pixel counts, rows = ground-truth class, columns = predicted class; pixels whose ground
    truth is not a class (the ignore label) are not counted. pred, gt: [H, W] integer class indices."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt differ in shape: {pred.shape} vs {gt.shape}")
    keep = gt < K
    p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= K):
        raise ValueError(f"predicted labels must lie in 0..{K - 1}")
    return np.bincount(g * K + p, minlength=K * K).reshape(K, K)


def iou_dice(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN) from a confusion matrix;
    NaN for a class with TP + FP + FN = 0 (absent from both)."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    return iou, dice


def class_boundary_f(pred: np.ndarray, gt: np.ndarray, K: int, tolerances=TOLERANCES_PX) -> np.ndarray:
    """Boundary F of each class (the binary BoundF of `pred == k` against `gt == k`, mean over the
    tolerances) -> [K], NaN for a class absent from both. Boundary pixels on or next to ignored pixels
    are left out of both boundary maps."""
    ignore = gt >= K
    near_ignore = ndimage.binary_dilation(ignore, structure=np.ones((3, 3), bool)) if ignore.any() else ignore
    out = np.full(K, np.nan)
    for k in range(K):
        pk, gk = (pred == k) & ~ignore, gt == k
        if not (pk.any() or gk.any()):
            continue
        bp, bg = seg2bmap(pk) & ~near_ignore, seg2bmap(gk) & ~near_ignore
        out[k] = float(np.mean([score_from_bmaps(bp, bg, d).f for d in tolerances]))
    return out


def score_classes(pred: np.ndarray, gt: np.ndarray, K: int) -> dict:
    """Per-image scores of a label map pair: {"cm": [K, K], "iou": [K], "dice": [K], "boundf": [K]}."""
    cm = confusion_matrix(pred, gt, K)
    iou, dice = iou_dice(cm)
    return {"cm": cm, "iou": iou, "dice": dice, "boundf": class_boundary_f(pred, gt, K)}


def _nanmean(a, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def summarize_classes(rows: list[dict], names: list[str], background: int | None = None) -> dict:
    """Dataset summary of `score_classes` results (one per image): per class and mean over classes; with a
    `background` class index, also the means over the other classes (`miou_fg`, ...). Without one there are
    no `_fg` keys, and "foreground_means" says why."""
    iou = np.stack([r["iou"] for r in rows])  # [N, K]
    dice = np.stack([r["dice"] for r in rows])
    bf = np.stack([r["boundf"] for r in rows])
    cm = sum(r["cm"] for r in rows)
    iou_pool, dice_pool = iou_dice(cm)
    per_img_iou, per_img_dice, per_img_bf = _nanmean(iou, 0), _nanmean(dice, 0), _nanmean(bf, 0)
    per_class = {
        name: {
            "iou": _num(per_img_iou[k]),
            "dice": _num(per_img_dice[k]),
            "iou_pooled": _num(iou_pool[k]),
            "dice_pooled": _num(dice_pool[k]),
            "boundf": _num(per_img_bf[k]),
            "gt_pixels": int(cm[k].sum()),
            "pred_pixels": int(cm[:, k].sum()),
            "images": int(np.isfinite(iou[:, k]).sum()),  # images where the class is in gt or prediction
        }
        for k, name in enumerate(names)
    }

    def mean(v: np.ndarray) -> float | None:
        return _num(_nanmean(v)) if np.isfinite(v).any() else None

    total = int(cm.sum())
    means = {
        "miou": per_img_iou,
        "mdice": per_img_dice,
        "miou_pooled": iou_pool,
        "mdice_pooled": dice_pool,
        "boundf": per_img_bf,
    }
    out = {
        "n_images": len(rows),
        "classes": list(names),
        "background": None if background is None else names[background],
        **{key: mean(v) for key, v in means.items()},
    }
    if background is None:
        out["foreground_means"] = NO_BACKGROUND
    else:
        fg = np.arange(len(names)) != background
        out |= {f"{key}_fg": mean(v[fg]) for key, v in means.items()}
    return out | {
        "pixel_accuracy": float(np.trace(cm) / total) if total else None,
        "per_class": per_class,
        "confusion": cm.tolist(),
    }


NO_BACKGROUND = (
    'none: no class is the background (mark one with "background": true in classes.json), so there are '
    "no means without it (_fg)"
)


def mean_foreground_iou(preds, gts, K: int, background: int = 0) -> float:
    """The mean over the classes other than `background` of each class's IoU averaged over the images where
    it is present (the `miou_fg` of `summarize_classes`)."""
    rows = [{"iou": iou_dice(confusion_matrix(p, g, K))[0]} for p, g in zip(preds, gts)]
    v = _nanmean(np.stack([r["iou"] for r in rows]), 0)[np.arange(K) != background]
    return float(_nanmean(v)) if np.isfinite(v).any() else float("nan")


def plot_confusion(cm: np.ndarray, names: list[str], path, title: str = "Confusion matrix") -> None:
    """Row-normalised confusion matrix (rows: ground truth) as a PNG, with the pixel counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    K = len(names)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig = Figure(figsize=(1.6 + 0.8 * K, 1.2 + 0.7 * K), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(K):
        for j in range(K):
            colour = "white" if frac[i, j] > 0.6 else "black"
            ax.text(j, i, f"{frac[i, j]:.2f}\n{cm[i, j]}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(K), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(K), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth (rows sum to 1)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
