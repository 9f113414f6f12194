"""Metric functions on tiny hand-computed masks, every empty-mask case, and sklearn parity."""

from __future__ import annotations

import numpy as np
import pytest

from segdiff.metrics.boundary import (
    boundary_f_per_tolerance,
    boundary_score,
    boundf,
    disk,
    seg2bmap,
)
from segdiff.metrics.calibration import (
    BinStats,
    CalibrationAccumulator,
    bin_index,
    calibration_score,
    plot_reliability,
)
from segdiff.metrics.overlap import Confusion, confusion, f1, f1_pooled, iou, iou_pooled
from segdiff.metrics.wcov import wcov_paper, weighted_coverage


def box(h: int, w: int, rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[rows, cols] = True
    return m


EMPTY = np.zeros((6, 6), bool)
FULL_BLOCK = box(6, 6, slice(1, 4), slice(1, 4))

# ---------------------------------------------------------------- overlap


def test_iou_f1_hand_computed():
    gt = box(4, 5, slice(0, 2), slice(0, 3))  # 6 px
    pred = box(4, 5, slice(0, 2), slice(1, 4))  # 6 px, 4 shared
    assert confusion(pred, gt) == Confusion(tp=4, fp=2, fn=2)
    assert iou(pred, gt) == pytest.approx(4 / 8)
    assert f1(pred, gt) == pytest.approx(8 / 12)
    # 0/255 integer masks mean the same as bool masks
    assert iou(pred.astype(np.uint8) * 255, gt.astype(np.uint8)) == pytest.approx(0.5)


def test_pooled_sums_counts_before_dividing():
    a = Confusion(tp=1, fp=1, fn=0)  # IoU 1/2
    b = Confusion(tp=9, fp=0, fn=1)  # IoU 9/10
    assert iou_pooled([a, b]) == pytest.approx(10 / 12)
    assert f1_pooled([a, b]) == pytest.approx(20 / 22)


@pytest.mark.parametrize("paper_compat", [False, True])
def test_overlap_empty_masks(paper_compat):
    both = 0.0 if paper_compat else 1.0
    assert iou(EMPTY, EMPTY, paper_compat) == both
    assert f1(EMPTY, EMPTY, paper_compat) == both
    for pred, gt in ((EMPTY, FULL_BLOCK), (FULL_BLOCK, EMPTY)):
        assert iou(pred, gt, paper_compat) == 0.0
        assert f1(pred, gt, paper_compat) == 0.0
    assert iou_pooled([Confusion(0, 0, 0)] * 3, paper_compat) == both
    assert f1_pooled([], paper_compat) == both


def test_overlap_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        iou(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_iou_f1_match_sklearn_on_random_masks():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        shape = tuple(rng.integers(5, 30, size=2))
        gt = rng.random(shape) < rng.uniform(0.05, 0.9)
        pred = rng.random(shape) < rng.uniform(0.05, 0.9)
        gt.flat[0] = pred.flat[1] = True  # non-empty: sklearn's zero_division case is tested above
        assert iou(pred, gt) == pytest.approx(metrics.jaccard_score(gt.ravel(), pred.ravel()), abs=1e-12)
        assert f1(pred, gt) == pytest.approx(metrics.f1_score(gt.ravel(), pred.ravel()), abs=1e-12)


# ---------------------------------------------------------------- WCov


def test_wcov_paper_is_an_area_ratio():
    gt = box(5, 8, slice(0, 2), slice(0, 3))  # 6 px
    assert wcov_paper(box(5, 8, slice(3, 5), slice(5, 8)), gt) == 1.0  # same area, no overlap
    assert wcov_paper(box(5, 8, slice(0, 1), slice(0, 3)), gt) == pytest.approx(3 / 6)
    assert wcov_paper(gt, box(5, 8, slice(0, 1), slice(0, 3))) == pytest.approx(3 / 6)


@pytest.mark.parametrize("paper_compat", [False, True])
def test_wcov_paper_empty_masks(paper_compat):
    assert wcov_paper(EMPTY, EMPTY, paper_compat) == (0.0 if paper_compat else 1.0)
    assert wcov_paper(EMPTY, FULL_BLOCK, paper_compat) == 0.0
    assert wcov_paper(FULL_BLOCK, EMPTY, paper_compat) == 0.0


def test_weighted_coverage_hand_computed():
    gt = np.zeros((6, 8), bool)
    gt[0:2, 0:2] = True  # region A, 4 px
    gt[4, 5:7] = True  # region B, 2 px
    pred = gt.copy()
    pred[4, 5:7] = False
    pred[2, 2] = True  # touches A diagonally: 8-connected, so one predicted region of 5 px
    # A: IoU 4/5 with the merged region; B: no predicted region -> 0.  Weights 4/6 and 2/6.
    assert weighted_coverage(pred, gt) == pytest.approx(4 / 6 * 4 / 5)
    assert weighted_coverage(gt, gt) == 1.0


def test_weighted_coverage_uses_8_connectivity_and_best_match():
    gt = np.zeros((3, 3), bool)
    gt[0, 0] = gt[1, 1] = True  # one region under 8-connectivity
    pred = gt.copy()
    pred[1, 2] = True  # one predicted region of 3 px
    # 8-connected: IoU 2/3. (4-connected would give (1 + 1/2) / 2 = 0.75.)
    assert weighted_coverage(pred, gt) == pytest.approx(2 / 3)
    gt2 = box(1, 9, slice(0, 1), slice(0, 9))
    pred2 = np.zeros((1, 9), bool)
    pred2[0, 0:2] = pred2[0, 3:8] = True  # two predicted regions over one gt region: best IoU 5/9
    assert weighted_coverage(pred2, gt2) == pytest.approx(5 / 9)


def test_weighted_coverage_empty_masks():
    assert weighted_coverage(EMPTY, EMPTY) == 1.0
    assert weighted_coverage(FULL_BLOCK, EMPTY) == 0.0
    assert weighted_coverage(EMPTY, FULL_BLOCK) == 0.0


# ---------------------------------------------------------------- boundary F


def seg2bmap_by_padding(seg: np.ndarray) -> np.ndarray:
    """The DAVIS recipe as stated: xor with zero-padded east/south/south-east shifts, then the last row
    compares east only, the last column south only, and the corner is cleared."""
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1], s[:-1, :], se[:-1, :-1] = seg[:, 1:], seg[1:, :], seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def test_seg2bmap_square_and_padding_recipe():
    sq = box(8, 8, slice(2, 5), slice(2, 5))
    ring = box(8, 8, slice(1, 5), slice(1, 5)) & ~box(8, 8, slice(2, 4), slice(2, 4))
    np.testing.assert_array_equal(seg2bmap(sq), ring)
    assert not seg2bmap(np.ones((4, 5), bool)).any()  # the image edge is not a boundary
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (1, 6), (6, 1), (7, 9), (12, 5)]:
        for density in (0.2, 0.5, 0.9):
            seg = rng.random(shape) < density
            np.testing.assert_array_equal(seg2bmap(seg), seg2bmap_by_padding(seg))


def test_disk_matches_skimage_definition():
    np.testing.assert_array_equal(disk(1), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool))
    d2 = disk(2)
    assert d2.shape == (5, 5) and d2.sum() == 13 and not d2[0, 1] and d2[0, 2] and d2[1, 1]
    with pytest.raises(ValueError):
        disk(0)
    with pytest.raises(ValueError):
        disk(1.5)


def test_boundary_f_shifted_square_by_hand():
    gt = box(8, 8, slice(2, 5), slice(2, 5))
    pred = box(8, 8, slice(2, 5), slice(4, 7))  # shifted right by 2
    # Rings of 12 px each. At 1 px (cross), 8 of pred's ring pixels touch gt's ring (the column x = 6 and
    # the corners (1,6), (4,6) are 2 px away), and symmetrically for recall: P = R = F = 2/3.
    s1 = boundary_score(pred, gt, 1)
    assert (s1.precision, s1.recall, s1.f) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    per = boundary_f_per_tolerance(pred, gt)
    assert per == pytest.approx({1: 2 / 3, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0})
    assert boundf(pred, gt) == pytest.approx((2 / 3 + 4) / 5)
    assert boundf(gt, gt) == 1.0


def test_boundary_precision_recall_are_not_swapped():
    gt = box(12, 12, slice(2, 10), slice(2, 10))  # boundary: 9x9 ring minus 7x7 = 32 px
    pred = gt.copy()
    pred[0, 11] = True  # far from gt: adds boundary pixels (0, 10) and (0, 11) to pred only
    s = boundary_score(pred, gt, 1)
    assert (s.precision, s.recall) == pytest.approx((32 / 34, 1.0))
    s = boundary_score(gt, pred, 1)
    assert (s.precision, s.recall) == pytest.approx((1.0, 32 / 34))


def test_boundary_empty_conventions():
    full = np.ones((6, 6), bool)  # a full mask has an empty boundary map
    s = boundary_score(EMPTY, EMPTY, 1)
    assert (s.precision, s.recall, s.f) == (1.0, 1.0, 1.0)
    s = boundary_score(EMPTY, FULL_BLOCK, 1)  # prediction's boundary empty
    assert (s.precision, s.recall, s.f) == (1.0, 0.0, 0.0)
    s = boundary_score(FULL_BLOCK, full, 1)  # ground truth's boundary empty
    assert (s.precision, s.recall, s.f) == (0.0, 1.0, 0.0)
    assert boundf(EMPTY, EMPTY) == 1.0 and boundf(full, EMPTY) == 1.0  # both boundaries empty


# ---------------------------------------------------------------- calibration


def test_bin_index_edges():
    p = np.array([0.0, 0.05, 0.1, 0.3, 0.95, 1.0], np.float64)
    np.testing.assert_array_equal(bin_index(p), [0, 0, 1, 3, 9, 9])
    # float32(k/10) sits just below k/10 for k = 7, 9; it still belongs to bin k
    k = np.arange(10)
    np.testing.assert_array_equal(bin_index((k / 10).astype(np.float32)), k)
    np.testing.assert_array_equal(bin_index(np.array([0.0999, 0.6999])), [0, 6])


def test_calibration_hand_computed():
    p1, g1 = np.array([[0.05, 0.05], [0.95, 0.95]]), np.array([[0, 1], [1, 1]], bool)
    # bin 0: conf .05, acc .5 -> .2025; bin 9: conf .95, acc 1 -> .0025; mean over 2 bins
    assert calibration_score(p1, g1) == pytest.approx((0.2025 + 0.0025) / 2)
    p2, g2 = np.full((2, 2), 0.25), np.array([[1, 0], [0, 0]], bool)  # perfectly calibrated
    acc = CalibrationAccumulator()
    acc.add(p1, g1)
    acc.add(p2, g2)
    s = acc.summary()
    assert s["n_images"] == 2
    assert s["mean"] == pytest.approx(0.1025 / 2)
    assert s["stderr"] == pytest.approx(0.1025 / 2)  # std(ddof=1) of {0.1025, 0} / sqrt(2)
    assert s["pooled"] == pytest.approx((0.2025 + 0.0 + 0.0025) / 3)
    assert s["ece"] == pytest.approx(2 / 8 * 0.45 + 4 / 8 * 0.0 + 2 / 8 * 0.05)
    assert s["bins"]["count"] == [2, 0, 4, 0, 0, 0, 0, 0, 0, 2]
    assert s["bins"]["mean_prob"][1] is None and s["bins"]["frac_pos"][2] == pytest.approx(0.25)


def test_calibration_single_image_and_validation():
    acc = CalibrationAccumulator()
    with pytest.raises(ValueError, match="no images"):
        acc.summary()
    acc.add(np.array([[1.0, 0.0]]), np.array([[True, False]]))
    s = acc.summary()
    assert s["mean"] == 0.0 and s["stderr"] == 0.0 and s["ece"] == 0.0
    with pytest.raises(ValueError, match="within"):
        acc.add(np.array([[1.5]]), np.array([[True]]))
    with pytest.raises(ValueError, match="within"):
        acc.add(np.array([[np.nan]]), np.array([[True]]))
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((2, 2)), np.zeros((2, 3), bool))


def test_binstats_add_equals_stats_of_concatenation():
    rng = np.random.default_rng(2)
    p, g = rng.random((2, 50)), rng.random((2, 50)) < 0.4
    total = BinStats.from_arrays(p[0], g[0]) + BinStats.from_arrays(p[1], g[1])
    whole = BinStats.from_arrays(p.ravel(), g.ravel())
    np.testing.assert_array_equal(total.count, whole.count)
    np.testing.assert_array_equal(total.sum_pos, whole.sum_pos)
    np.testing.assert_allclose(total.sum_prob, whole.sum_prob)


def test_reliability_png_is_written(tmp_path):
    from PIL import Image

    stats = BinStats.from_arrays(np.linspace(0, 1, 100), np.linspace(0, 1, 100) > 0.5)
    out = tmp_path / "rel.png"
    plot_reliability(stats, out, "test")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100
