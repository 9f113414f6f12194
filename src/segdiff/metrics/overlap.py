"""Foreground overlap of binary masks: IoU (Jaccard) and F1 (Dice), per image and pooled.

Paper: "mIoU" and "F1-Score" of Table 2 and Table 4 (Vaihingen), "mIoU" and "Dice" of Table 3
(MoNuSeg), the per-class mIoU of Table 1 (Cityscapes, one object crop per image). For these binary tasks
the paper's "mIoU" is the mean over test images of each image's *foreground* IoU: the authors' code calls
sklearn's ``jaccard_score`` / ``f1_score`` (binary, positive label 1) on each image and averages the
results. It is not the mean over the two classes {background, foreground}.

Empty-mask policy (see docs/metrics.md):
  default:        both masks empty -> IoU = F1 = 1 (nothing was there, nothing was predicted);
                  exactly one empty -> 0 (follows from the formula, no special case needed).
  paper_compat:   both masks empty -> IoU = F1 = 0, as sklearn's zero_division default gives in the
                  authors' code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


def as_mask(a: np.ndarray, name: str = "mask") -> np.ndarray:
    """A 2-D array as bool [H, W]; any non-zero value is foreground."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D mask [H, W], got shape {a.shape}")
    return a if a.dtype == np.bool_ else a != 0


def as_mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool [H, W] of the same shape (a shape mismatch is a programming error here;
    `evaluate_dirs` reports mismatched files as a DataError before it gets this far)."""
    pred, gt = as_mask(pred, "pred"), as_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt differ in shape: {pred.shape} vs {gt.shape}")
    return pred, gt


@dataclass(frozen=True)
class Confusion:
    """Foreground pixel counts of one image, or summed over images (``a + b``)."""

    tp: int
    fp: int
    fn: int

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def both_empty(self) -> bool:
        """True when prediction and ground truth have no foreground pixel."""
        return self.tp + self.fp + self.fn == 0


def confusion(pred: np.ndarray, gt: np.ndarray) -> Confusion:
    """TP, FP, FN foreground pixel counts of masks pred, gt: [H, W] (bool, or non-zero = foreground)."""
    pred, gt = as_mask_pair(pred, gt)
    tp = int(np.count_nonzero(pred & gt))
    return Confusion(tp=tp, fp=int(np.count_nonzero(pred)) - tp, fn=int(np.count_nonzero(gt)) - tp)


def _both_empty_score(paper_compat: bool) -> float:
    return 0.0 if paper_compat else 1.0


def iou_from_confusion(c: Confusion, paper_compat: bool = False) -> float:
    """IoU = TP / (TP + FP + FN); both masks empty -> 1 (0 with paper_compat)."""
    if c.both_empty:
        return _both_empty_score(paper_compat)
    return c.tp / (c.tp + c.fp + c.fn)


def f1_from_confusion(c: Confusion, paper_compat: bool = False) -> float:
    """F1 = Dice = 2 TP / (2 TP + FP + FN); both masks empty -> 1 (0 with paper_compat)."""
    if c.both_empty:
        return _both_empty_score(paper_compat)
    return 2 * c.tp / (2 * c.tp + c.fp + c.fn)


def iou(pred: np.ndarray, gt: np.ndarray, paper_compat: bool = False) -> float:
    """Foreground IoU of one image; pred, gt: [H, W]."""
    return iou_from_confusion(confusion(pred, gt), paper_compat)


def f1(pred: np.ndarray, gt: np.ndarray, paper_compat: bool = False) -> float:
    """Foreground F1 (Dice) of one image; pred, gt: [H, W]."""
    return f1_from_confusion(confusion(pred, gt), paper_compat)


def pooled_confusion(confusions: Iterable[Confusion]) -> Confusion:
    """TP, FP, FN summed over images."""
    return sum(confusions, Confusion(0, 0, 0))


def iou_pooled(confusions: Iterable[Confusion], paper_compat: bool = False) -> float:
    """Whole-dataset IoU: sum TP / sum (TP + FP + FN) over images, so large objects weigh more
    than in the per-image mean the paper reports."""
    return iou_from_confusion(pooled_confusion(confusions), paper_compat)


def f1_pooled(confusions: Iterable[Confusion], paper_compat: bool = False) -> float:
    """Whole-dataset F1: 2 sum TP / (2 sum TP + sum FP + sum FN) over images."""
    return f1_from_confusion(pooled_confusion(confusions), paper_compat)
