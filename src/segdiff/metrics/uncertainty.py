"""Does a per-pixel uncertainty point at the errors? The AUROC of the uncertainty for separating the
wrongly from the rightly predicted pixels (issue 20).

AUROC = P(u_wrong > u_right) + P(u_wrong = u_right) / 2 over pairs of a wrong and a right pixel: 1 when
every error is more uncertain than every correct pixel, 0.5 for an uncertainty that says nothing. It is
undefined (None) for an image without an error or without a correct pixel.

Per image it is exact (average ranks, scipy's rankdata). Pooled over images the accumulator keeps two
histograms of N_BINS bins over [0, top] (top: 0.5 for a std of probabilities or 1 - max(p, 1 - p);
log K for an entropy), so that a data set never sits in memory; values in one bin count as ties.

The one-pass baseline has no uncertainty map; its own confidence gives one: u = 0.5 - |p - 0.5|
(`confidence_uncertainty`), the same ranking as 1 - max(p, 1 - p).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

N_BINS = 4096


def error_auroc(uncertainty: np.ndarray, wrong: np.ndarray) -> float | None:
    """Exact AUROC of `uncertainty` (float, any shape) for the pixels where `wrong` (bool, same shape) is True."""
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    w = np.asarray(wrong, dtype=bool).ravel()
    if u.shape != w.shape:
        raise ValueError(f"uncertainty has {u.size} pixels, the error map {w.size}")
    n_pos = int(w.sum())
    n_neg = w.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(u)
    return float((ranks[w].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confidence_uncertainty(prob: np.ndarray) -> np.ndarray:
    """A one-pass model's uncertainty from its own foreground probability: 0.5 - |p - 0.5| in [0, 0.5]."""
    return 0.5 - np.abs(np.asarray(prob, dtype=np.float64) - 0.5)


class ErrorAUROCAccumulator:
    """Streams (uncertainty, wrong) one image at a time: per-image exact AUROCs and a pooled one."""

    def __init__(self, top: float = 0.5, n_bins: int = N_BINS) -> None:
        if top <= 0:
            raise ValueError(f"top must be positive, got {top}")
        self.top, self.n_bins = float(top), n_bins
        self.per_image: list[float | None] = []
        self.hist = np.zeros((2, n_bins), dtype=np.int64)  # [right, wrong]

    def add(self, uncertainty: np.ndarray, wrong: np.ndarray) -> float | None:
        u = np.asarray(uncertainty, dtype=np.float64).ravel()
        w = np.asarray(wrong, dtype=bool).ravel()
        score = error_auroc(u, w)
        self.per_image.append(score)
        idx = np.clip((u / self.top * self.n_bins).astype(np.int64), 0, self.n_bins - 1)
        self.hist[0] += np.bincount(idx[~w], minlength=self.n_bins)
        self.hist[1] += np.bincount(idx[w], minlength=self.n_bins)
        return score

    def pooled(self) -> float | None:
        right, wrong = self.hist
        n_neg, n_pos = int(right.sum()), int(wrong.sum())
        if n_pos == 0 or n_neg == 0:
            return None
        below = np.cumsum(right) - right  # right pixels in lower bins
        return float((wrong * (below + right / 2)).sum() / (n_pos * n_neg))

    def summary(self) -> dict:
        """mean over the images where it is defined, how many those are, and the pooled AUROC."""
        defined = [s for s in self.per_image if s is not None]
        return {
            "mean": float(np.mean(defined)) if defined else None,
            "n_images": len(defined),
            "pooled": self.pooled(),
        }
