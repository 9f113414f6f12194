"""The best single global grey-level threshold: what a segmentation must beat to have learned more than
intensity.

A pixel's grey level is the mean of its channels; the rule "foreground where grey >= t" (polarity "above")
or "where grey < t" ("below") is scored by the per-image foreground IoU (and Dice), averaged over the images
(an image where both the rule and the truth are empty scores 1). The threshold and polarity with the best
mean IoU on the `fit` images win; ties go to the lower threshold, then to "above".

Two protocols use it, and differ on purpose:

* `segdiff demo` (report.json `best_global_threshold`): grey in [0, 1] as read, thresholds 0, 0.01, ..., 1
  (DEMO_THRESHOLDS), chosen on the test images and scored on them: the best any global threshold can do on
  the test split, an upper bound for that baseline (the demo's data set makes intensity useless by design).
* the MoNuSeg benchmark (results.json `reference_global_threshold`): grey rounded to the 256 levels 0..255
  (MONUSEG_LEVELS), thresholds 0..255, chosen on the training images and applied to the test images, as a
  trained method would be.

Images stream through per-image histograms (one count per threshold interval), so a large split is never
held in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

DEMO_THRESHOLDS = np.linspace(0, 1, 101)
MONUSEG_LEVELS = 256
MONUSEG_THRESHOLDS = np.arange(MONUSEG_LEVELS)
POLARITIES = ("above", "below")


def grey(image: np.ndarray, levels: int | None = None) -> np.ndarray:
    """The grey level of an image [H, W, C] (or [H, W]) in [0, 1]: the mean over channels, in the image's
    dtype; with `levels`, rounded to the integers 0..levels - 1."""
    g = image.mean(axis=-1) if image.ndim == 3 else image
    if levels is not None:
        g = np.round(g * (levels - 1)).astype(np.int64)
    return g


@dataclass(frozen=True)
class GlobalThreshold:
    threshold: float | int
    polarity: str  # "above": foreground where grey >= threshold; "below": where grey < threshold
    fit_iou: float  # mean per-image IoU on the images the rule was chosen on
    iou: np.ndarray  # per-image IoU on the images it was applied to (the fit images when none were given)
    dice: np.ndarray

    @property
    def rule(self) -> str:
        return f"foreground where grey is {'>=' if self.polarity == 'above' else '<'} {self.threshold}"


def _counts(pairs: Iterable[tuple[np.ndarray, np.ndarray]], thresholds: np.ndarray, levels: int | None):
    """Per image and threshold j, the foreground and background pixels with grey >= thresholds[j], and the
    image's foreground and background pixel counts."""
    fg_above, bg_above, n_fg, n_bg = [], [], [], []
    n = len(thresholds)
    for image, mask in pairs:
        g = grey(image, levels)
        mask = np.asarray(mask, dtype=bool)
        # interval i holds the pixels with exactly i thresholds <= grey: grey >= thresholds[j] <=> i > j
        interval = np.searchsorted(thresholds, g, side="right")
        for above, total, sel in ((fg_above, n_fg, mask), (bg_above, n_bg, ~mask)):
            hist = np.bincount(interval[sel], minlength=n + 1)
            above.append(np.cumsum(hist[::-1])[::-1][1:])
            total.append(int(sel.sum()))
    if not n_fg:
        raise ValueError("no images to fit or score a grey-level threshold on")
    return np.stack(fg_above), np.stack(bg_above), np.array(n_fg), np.array(n_bg)


def _scores(counts, j: int, polarity: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (IoU, Dice) of threshold j with `polarity`."""
    fg_above, bg_above, n_fg, n_bg = counts
    if polarity == "above":
        tp, fp = fg_above[:, j], bg_above[:, j]
    else:
        tp, fp = n_fg - fg_above[:, j], n_bg - bg_above[:, j]
    fn = n_fg - tp
    union, total = tp + fp + fn, 2 * tp + fp + fn
    iou = np.where(union > 0, tp / np.maximum(union, 1), 1.0)
    dice = np.where(total > 0, 2 * tp / np.maximum(total, 1), 1.0)
    return iou, dice


def best_global_threshold(
    fit: Iterable[tuple[np.ndarray, np.ndarray]],
    thresholds: np.ndarray = DEMO_THRESHOLDS,
    levels: int | None = None,
    apply_to: Iterable[tuple[np.ndarray, np.ndarray]] | None = None,
) -> GlobalThreshold:
    """The threshold of `thresholds` (sorted ascending) and polarity with the best mean per-image IoU on the
    (image, mask) pairs `fit`, scored per image on `apply_to` (default: `fit` itself). `levels`: the grey
    levels are first rounded to 0..levels - 1 (see `grey`)."""
    thresholds = np.asarray(thresholds)
    counts = _counts(fit, thresholds, levels)
    best, best_iou = None, -1.0
    for j in range(len(thresholds)):
        for polarity in POLARITIES:
            mean_iou = float(np.mean(_scores(counts, j, polarity)[0]))
            if mean_iou > best_iou:
                best, best_iou = (j, polarity), mean_iou
    j, polarity = best
    scored = counts if apply_to is None else _counts(apply_to, thresholds, levels)
    iou, dice = _scores(scored, j, polarity)
    return GlobalThreshold(thresholds[j].item(), polarity, best_iou, iou, dice)
