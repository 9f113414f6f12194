"""Calibration of per-pixel foreground probabilities (paper section 5, Fig. 6).

The paper: "We estimate the calibration score by splitting the [0, 1] range into ten uniform bins, then
average the squared difference between each bin's mean prediction probability and the percentage of
positive samples." With bins b = [0, 0.1), ..., [0.8, 0.9), [0.9, 1.0] (1.0 goes in the last bin),
n_b pixels in bin b, conf_b their mean probability and acc_b their fraction of ground-truth foreground:

  calibration score  = mean over non-empty bins b of (conf_b - acc_b)^2     (unweighted, as the paper)
  ECE                = sum_b n_b / N * |conf_b - acc_b|                     (pixel-weighted, Guo et al.)

Fig. 6 reports the score per image averaged over test images, with standard-error bars; `summary()` gives
that (mean, stderr) and the same score on bins pooled over all pixels of all images (pooled), and ECE on
the pooled bins. Lower is better for all three.

Streaming: `CalibrationAccumulator.add(prob, gt)` keeps only 3 x n_bins sums and one float per image, so a
dataset never needs to sit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_BINS = 10

# A probability written as float32 is off its decimal value by up to ~6e-8: float32(0.7) = 0.69999999,
# float32(0.9) = 0.89999998. An ensemble of 10 generations produces exactly such values (k / 10), and they
# belong on the bin edge they stand for, so values within this many bin widths below an edge count as on
# it. The shift is far below any real difference in probability.
_EDGE_EPS = 1e-5


def bin_index(prob: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin of each probability in [0, 1]: floor(p * n_bins), with 1.0 in the last bin; same shape, intp."""
    idx = np.floor(np.asarray(prob, dtype=np.float64) * n_bins + _EDGE_EPS).astype(np.intp)
    return np.clip(idx, 0, n_bins - 1)


@dataclass
class BinStats:
    """Per-bin sums [n_bins]: pixel count, sum of probabilities, count of ground-truth foreground."""

    count: np.ndarray
    sum_prob: np.ndarray
    sum_pos: np.ndarray

    @classmethod
    def zeros(cls, n_bins: int = N_BINS) -> BinStats:
        return cls(np.zeros(n_bins, np.int64), np.zeros(n_bins), np.zeros(n_bins, np.int64))

    @classmethod
    def from_arrays(cls, prob: np.ndarray, gt: np.ndarray, n_bins: int = N_BINS) -> BinStats:
        """Bin statistics of prob: float [...] in [0, 1] against gt: bool [...] of the same shape."""
        prob, gt = np.asarray(prob), np.asarray(gt)
        if prob.shape != gt.shape:
            raise ValueError(f"prob and gt differ in shape: {prob.shape} vs {gt.shape}")
        p = prob.ravel().astype(np.float64)
        if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
            raise ValueError("probabilities must be finite and within [0, 1]")
        idx = bin_index(p, n_bins)
        return cls(
            count=np.bincount(idx, minlength=n_bins).astype(np.int64),
            sum_prob=np.bincount(idx, weights=p, minlength=n_bins),
            sum_pos=np.bincount(idx[gt.ravel() != 0], minlength=n_bins).astype(np.int64),
        )

    def __add__(self, other: BinStats) -> BinStats:
        return BinStats(self.count + other.count, self.sum_prob + other.sum_prob, self.sum_pos + other.sum_pos)

    @property
    def n_bins(self) -> int:
        return len(self.count)

    @property
    def nonempty(self) -> np.ndarray:
        return self.count > 0

    def mean_prob(self) -> np.ndarray:
        """conf_b [n_bins]; 0 in empty bins (check `nonempty`)."""
        return np.divide(self.sum_prob, self.count, out=np.zeros(self.n_bins), where=self.nonempty)

    def frac_pos(self) -> np.ndarray:
        """acc_b [n_bins]; 0 in empty bins (check `nonempty`)."""
        return np.divide(self.sum_pos, self.count, out=np.zeros(self.n_bins), where=self.nonempty)

    def score(self) -> float:
        """Calibration score: unweighted mean over non-empty bins of (conf_b - acc_b)^2."""
        ne = self.nonempty
        if not ne.any():
            raise ValueError("no pixels binned")
        return float(np.mean((self.mean_prob()[ne] - self.frac_pos()[ne]) ** 2))

    def ece(self) -> float:
        """Expected calibration error: sum_b n_b / N * |conf_b - acc_b|."""
        n = int(self.count.sum())
        if n == 0:
            raise ValueError("no pixels binned")
        return float(np.sum(self.count * np.abs(self.mean_prob() - self.frac_pos())) / n)


def calibration_score(prob: np.ndarray, gt: np.ndarray, n_bins: int = N_BINS) -> float:
    """The paper's calibration score of one image; prob: float [H, W] in [0, 1], gt: bool [H, W]."""
    return BinStats.from_arrays(prob, gt, n_bins).score()


class CalibrationAccumulator:
    """Streams (prob, gt) one image at a time; keeps per-image scores and pooled bin sums."""

    def __init__(self, n_bins: int = N_BINS) -> None:
        self.n_bins = n_bins
        self.per_image: list[float] = []
        self.pooled = BinStats.zeros(n_bins)

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    def add(self, prob: np.ndarray, gt: np.ndarray) -> float:
        """Add one image (prob: float [H, W] in [0, 1], gt: bool [H, W]); returns its calibration score."""
        stats = BinStats.from_arrays(prob, gt, self.n_bins)
        score = stats.score()
        self.per_image.append(score)
        self.pooled = self.pooled + stats
        return score

    def summary(self) -> dict:
        """mean, stderr (over images; 0 for a single image), pooled, ece, n_images, n_bins, bins."""
        if not self.per_image:
            raise ValueError("no images added to the calibration accumulator")
        scores = np.asarray(self.per_image)
        n = len(scores)
        stderr = float(scores.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        p = self.pooled
        ne = p.nonempty
        return {
            "mean": float(scores.mean()),
            "stderr": stderr,
            "pooled": p.score(),
            "ece": p.ece(),
            "n_images": n,
            "n_bins": self.n_bins,
            "bins": {
                "edges": [round(i / self.n_bins, 10) for i in range(self.n_bins + 1)],
                "count": [int(c) for c in p.count],
                # None (JSON null) rather than 0 or NaN for a bin that holds no pixel.
                "mean_prob": [float(v) if e else None for v, e in zip(p.mean_prob(), ne, strict=True)],
                "frac_pos": [float(v) if e else None for v, e in zip(p.frac_pos(), ne, strict=True)],
            },
        }

    def plot_reliability(self, path: Path | str, title: str | None = None) -> None:
        """Write a reliability diagram PNG of the pooled bins (see `plot_reliability`)."""
        plot_reliability(self.pooled, path, title)


def plot_reliability(stats: BinStats, path: Path | str, title: str | None = None) -> None:
    """Reliability diagram: fraction of positives per bin against the diagonal, pixel counts below."""
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no figure registry to leak.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    b = stats.n_bins
    width = 1.0 / b
    left = np.arange(b) * width
    ne = stats.nonempty
    fig = Figure(figsize=(5.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(
        left[ne],
        stats.frac_pos()[ne],
        width=width,
        align="edge",
        color="tab:blue",
        alpha=0.6,
        edgecolor="k",
        label="fraction of foreground pixels",
    )
    ax.plot(
        stats.mean_prob()[ne],
        stats.frac_pos()[ne],
        "o",
        color="tab:red",
        label="(mean probability, fraction) per bin",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of foreground")
    ax.legend(loc="upper left", fontsize=8)
    head = title or "Reliability diagram"
    ax.set_title(f"{head}\ncalibration score {stats.score():.4f}, ECE {stats.ece():.4f}", fontsize=10)
    ax_n.bar(left, stats.count, width=width, align="edge", color="gray", edgecolor="k")
    if stats.count.max() > 0:
        ax_n.set_yscale("log")
    ax_n.set_xlabel("predicted foreground probability")
    ax_n.set_ylabel("pixels")
    fig.tight_layout()
    fig.savefig(path, format="png")
