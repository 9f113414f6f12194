"""Segmentation metrics of the SegDiff paper (section 5) and `segdiff evaluate`; see docs/metrics.md.

All metric functions take masks [H, W] (bool, or non-zero = foreground) and return floats in [0, 1].
"""

from .boundary import (
    TOLERANCES_PX,
    BoundaryScore,
    boundary_f_per_tolerance,
    boundary_score,
    boundf,
    seg2bmap,
)
from .calibration import BinStats, CalibrationAccumulator, calibration_score, plot_reliability
from .evaluate import evaluate_dirs, format_table, score_pair, summarize
from .overlap import Confusion, confusion, f1, f1_pooled, iou, iou_pooled
from .wcov import wcov_paper, weighted_coverage

__all__ = [
    "TOLERANCES_PX",
    "BinStats",
    "BoundaryScore",
    "CalibrationAccumulator",
    "Confusion",
    "boundary_f_per_tolerance",
    "boundary_score",
    "boundf",
    "calibration_score",
    "confusion",
    "evaluate_dirs",
    "f1",
    "f1_pooled",
    "format_table",
    "iou",
    "iou_pooled",
    "plot_reliability",
    "score_pair",
    "seg2bmap",
    "summarize",
    "wcov_paper",
    "weighted_coverage",
]
