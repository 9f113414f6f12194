"""Boundary F-score (Table 2 and Table 4's "FBound"), computed as the DAVIS benchmark's
``db_eval_boundary`` does, which is the code the SegDiff authors call for tolerances 1, 2, 3, 4, 5 px.

For a tolerance of d pixels:
  B_p, B_g   one-pixel boundary maps of prediction and ground truth (`seg2bmap`);
  D(B, d)    B dilated by a disk of radius d, i.e. the pixels within Euclidean distance d of B;
  precision  P = |B_p & D(B_g, d)| / |B_p|,   recall R = |B_g & D(B_p, d)| / |B_g|;
  F          2 P R / (P + R), or 0 when P + R = 0.
DAVIS's empty conventions are kept in both policy modes (the authors use the same code):
  both boundaries empty -> P = R = 1 (F = 1); prediction's empty only -> P = 1, R = 0 (F = 0);
  ground truth's empty only -> P = 0, R = 1 (F = 0).
Note a boundary can be empty while the mask is not: a mask that is all foreground has no transition.

DAVIS also accepts a tolerance below 1 as a fraction of the image diagonal; here tolerances are whole
pixels, as in the paper. BoundF is the mean of F over the tolerances 1..5 px.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .overlap import as_mask, as_mask_pair

TOLERANCES_PX: tuple[int, ...] = (1, 2, 3, 4, 5)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map bool [H, W] of a mask [H, W], as DAVIS's ``seg2bmap``.

    A pixel is boundary where it differs from its east, south or south-east neighbour. DAVIS compares
    with zero-padded shifted copies and then overwrites the last row with the east comparison only, the
    last column with the south comparison only, and clears the corner; the net effect, written here
    directly, is that only real neighbours are compared, so the image edge itself is never a boundary.
    The boundary therefore sits half a pixel towards the origin from the true contour, on both masks
    alike.
    """
    seg = as_mask(seg, "seg")
    b = np.zeros_like(seg)
    b[:-1, :-1] = (seg[:-1, :-1] ^ seg[:-1, 1:]) | (seg[:-1, :-1] ^ seg[1:, :-1]) | (seg[:-1, :-1] ^ seg[1:, 1:])
    b[-1, :-1] = seg[-1, :-1] ^ seg[-1, 1:]
    b[:-1, -1] = seg[:-1, -1] ^ seg[1:, -1]
    return b


def _tolerance(d: int) -> int:
    if int(d) != d or d < 1:
        raise ValueError(f"boundary tolerance must be a whole number of pixels >= 1, got {d}")
    return int(d)


def disk(radius: int) -> np.ndarray:
    """Disk structuring element bool [2r+1, 2r+1]: offsets with dy^2 + dx^2 <= r^2 (skimage's disk(r))."""
    r = _tolerance(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    return dy * dy + dx * dx <= r * r


@dataclass(frozen=True)
class BoundaryScore:
    """Boundary F-score, precision and recall at one tolerance."""

    f: float
    precision: float
    recall: float


def score_from_bmaps(fg_b: np.ndarray, gt_b: np.ndarray, tolerance_px: int) -> BoundaryScore:
    """Boundary F, precision, recall from boundary maps (`seg2bmap` of prediction and ground truth) at one
    tolerance in whole pixels (>= 1, not checked here); reuse the maps to score several tolerances or classes."""
    n_fg, n_gt = int(np.count_nonzero(fg_b)), int(np.count_nonzero(gt_b))
    if n_fg == 0 or n_gt == 0:
        # DAVIS: nothing to match on one side; the empty side is "perfectly precise / fully recalled".
        precision = 1.0 if n_fg == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
    else:
        se = disk(tolerance_px)
        gt_dil = ndimage.binary_dilation(gt_b, structure=se)
        fg_dil = ndimage.binary_dilation(fg_b, structure=se)
        precision = np.count_nonzero(fg_b & gt_dil) / n_fg
        recall = np.count_nonzero(gt_b & fg_dil) / n_gt
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return BoundaryScore(f=float(f), precision=float(precision), recall=float(recall))


def boundary_score(pred: np.ndarray, gt: np.ndarray, tolerance_px: int) -> BoundaryScore:
    """Boundary F, precision, recall of masks pred, gt: [H, W] at one tolerance in pixels (>= 1)."""
    pred, gt = as_mask_pair(pred, gt)
    return score_from_bmaps(seg2bmap(pred), seg2bmap(gt), _tolerance(tolerance_px))


def boundary_f_per_tolerance(
    pred: np.ndarray, gt: np.ndarray, tolerances: Iterable[int] = TOLERANCES_PX
) -> dict[int, float]:
    """Boundary F at each tolerance {d: F_d}; the boundary maps are computed once for all d."""
    pred, gt = as_mask_pair(pred, gt)
    fg_b, gt_b = seg2bmap(pred), seg2bmap(gt)
    return {d: score_from_bmaps(fg_b, gt_b, d).f for d in map(_tolerance, tolerances)}


def boundf(pred: np.ndarray, gt: np.ndarray, tolerances: Iterable[int] = TOLERANCES_PX) -> float:
    """BoundF: mean boundary F over the tolerances (1..5 px by default, as the paper)."""
    scores = boundary_f_per_tolerance(pred, gt, tolerances)
    if not scores:
        raise ValueError("boundf needs at least one tolerance")
    return float(np.mean(list(scores.values())))
