"""3D scores of label volumes (issue 21): Dice, IoU and HD95 in mm against an independent brute-force
computation on hand-made cases, nnU-Net's convention for empty masks, and the summary.json layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segdiff.data.nnunet import list_cases
from segdiff.data.volume_io import read_array, write_like
from segdiff.demo_volumes import make_volume_dataset
from segdiff.metrics.volume import evaluate_volumes, hd95, score_case


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_volume_dataset(tmp_path_factory.mktemp("vol") / "Dataset001_E", n_train=2, n_test=2, shape=(16, 16, 6))


def surface_brute(mask):
    """Mask voxels with a 6-neighbour outside the mask or the volume (written without scipy)."""
    pad = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for ax in range(3):
        for d in (-1, 1):
            inner &= np.roll(pad, d, axis=ax)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def hd95_brute(a, b, spacing):
    pa = np.argwhere(surface_brute(a)) * np.asarray(spacing)
    pb = np.argwhere(surface_brute(b)) * np.asarray(spacing)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))


def test_dice_and_hd95_against_an_independent_computation():
    sp = (0.8, 1.2, 3.0)
    a = np.zeros((12, 12, 6), bool)
    b = np.zeros_like(a)
    a[2, 3, 1] = b[5, 7, 4] = True  # one voxel each: the distance between their centres
    assert math.isclose(hd95(a, b, sp), math.sqrt((3 * 0.8) ** 2 + (4 * 1.2) ** 2 + (3 * 3.0) ** 2), rel_tol=1e-9)
    g = np.random.default_rng(0)
    for _ in range(5):
        a = np.zeros((14, 13, 7), bool)
        b = np.zeros_like(a)
        a[g.integers(0, 4) : g.integers(6, 14), g.integers(0, 4) : g.integers(6, 13), g.integers(0, 3) : 6] = True
        b[g.integers(2, 6) : g.integers(8, 14), 3:11, g.integers(1, 3) : g.integers(4, 7)] = True
        b[g.integers(0, 14), g.integers(0, 13), 6] = True  # an outlier voxel
        assert math.isclose(hd95(a, b, sp), hd95_brute(a, b, sp), rel_tol=1e-9)
        s = score_case(a.astype(np.uint8), b.astype(np.uint8), 2, sp)[1]
        tp = int((a & b).sum())
        assert math.isclose(s["Dice"], 2 * tp / (a.sum() + b.sum())) and math.isclose(s["IoU"], tp / (a | b).sum())
    empty = np.zeros((4, 4, 4), np.uint8)
    s = score_case(empty, empty, 3, (1, 1, 1))
    assert all(math.isnan(s[k]["Dice"]) and math.isnan(s[k]["HD95"]) for k in (1, 2))  # nnU-Net: NaN
    one = empty.copy()
    one[1, 1, 1] = 1
    assert score_case(empty, one, 2, (1, 1, 2))[1]["Dice"] == 0
    assert math.isclose(score_case(empty, one, 2, (1, 1, 2))[1]["HD95"], math.sqrt(16 + 16 + 64))  # the diagonal


def test_evaluate_writes_nnunet_summary_with_nan_left_out(dataset, tmp_path):
    ds, cases = list_cases(dataset, "Ts")
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, c in enumerate(cases):
        lab = read_array(c.label, np.uint8)
        if i == 1:
            lab[lab == 2] = 0  # case 1: core missed
        write_like(pred / c.label.name, lab, c.label)
    gt = tmp_path / "gt"
    gt.mkdir()
    for i, c in enumerate(cases):  # case 1 of the reference has no core either: NaN Dice for label 2
        lab = read_array(c.label, np.uint8)
        if i == 1:
            lab[lab == 2] = 0
        write_like(gt / c.label.name, lab, c.label)
    s = evaluate_volumes(pred, gt, dataset_json=dataset / "dataset.json")
    per = s["metric_per_case"]
    assert per[0]["metrics"]["1"]["Dice"] == 1.0 and per[0]["metrics"]["1"]["HD95"] == 0.0
    assert math.isnan(per[1]["metrics"]["2"]["Dice"])
    assert s["mean"]["2"]["Dice"] == 1.0  # NaN left out of the mean over cases
    written = json.loads((pred / "summary.json").read_text())
    assert written["metric_per_case"][1]["metrics"]["2"]["Dice"] is None and written["foreground_mean"]["Dice"] == 1.0
    assert (pred / "summary_per_case.csv").read_text().count("\n") == 1 + 2 * 2
