"""Weighted coverage: the SegDiff authors' area ratio (Table 2's "WCov") and the instance-segmentation
definition the benchmark it cites ([7], DarNet) names.

`wcov_paper` reproduces ``WCov_metric`` of the authors' code: min(|P|, |G|) / max(|P|, |G|), a ratio of
areas. It does not look at where the pixels are: a prediction of the right size in the wrong place scores
1. It is what the paper's WCov numbers measure, so we keep it under that name.

`weighted_coverage` is the usual definition (Silberman et al. 2014; DarNet): each 8-connected ground-truth
region r is matched to the predicted 8-connected region with the highest IoU, and those IoUs are averaged
with weights |r| / N, N = number of ground-truth foreground pixels.

Empty-mask policy:
  wcov_paper:         both empty -> 1 (default) or 0 (paper_compat: the authors' code divides by zero
                      there, so it has no value; `evaluate_dirs` records a warning for each such image);
                      exactly one empty -> 0 in both modes (the formula gives it).
  weighted_coverage:  empty ground truth -> 1 if the prediction is empty too, else 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .overlap import as_mask_pair

# 8-connectivity: diagonal neighbours belong to the same region, as in the instance benchmarks.
STRUCTURE_8 = np.ones((3, 3), dtype=bool)


def wcov_paper(pred: np.ndarray, gt: np.ndarray, paper_compat: bool = False) -> float:
    """The paper's WCov: min(area_pred, area_gt) / max(area_pred, area_gt); pred, gt: [H, W]."""
    pred, gt = as_mask_pair(pred, gt)
    a_pred, a_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if a_pred == 0 and a_gt == 0:
        return 0.0 if paper_compat else 1.0
    return min(a_pred, a_gt) / max(a_pred, a_gt)


def weighted_coverage(pred: np.ndarray, gt: np.ndarray) -> float:
    """Instance weighted coverage: sum_r |r| / N * max_s IoU(r, s); pred, gt: [H, W].

    r runs over the 8-connected components of gt's foreground, s over those of pred's, N = |gt|.
    """
    pred, gt = as_mask_pair(pred, gt)
    n_gt = int(np.count_nonzero(gt))
    if n_gt == 0:
        return 0.0 if pred.any() else 1.0
    gt_lab, n_r = ndimage.label(gt, structure=STRUCTURE_8)
    pred_lab, n_s = ndimage.label(pred, structure=STRUCTURE_8)
    area_r = np.bincount(gt_lab.ravel(), minlength=n_r + 1)
    area_s = np.bincount(pred_lab.ravel(), minlength=n_s + 1)
    # Only (r, s) pairs that share a pixel can have IoU > 0; counting those pairs directly keeps memory
    # proportional to the overlaps instead of an n_r x n_s matrix (MoNuSeg has ~1000 nuclei per image,
    # a noisy prediction can have many more components).
    both = gt_lab.astype(bool) & pred_lab.astype(bool)
    pair = gt_lab[both].astype(np.int64) * (n_s + 1) + pred_lab[both]
    codes, inter = np.unique(pair, return_counts=True)
    r, s = np.divmod(codes, n_s + 1)
    pair_iou = inter / (area_r[r] + area_s[s] - inter)
    best = np.zeros(n_r + 1)
    np.maximum.at(best, r, pair_iou)
    return float(np.dot(area_r[1:], best[1:]) / n_gt)
