"""Which class is the background (issue 19): it comes from classes.json ("background": true on a class;
in older files without the key, a class named "background"), never from the class order; without one,
`segdiff evaluate` writes no `_fg` means and says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segdiff.classset import ClassSet, load_classes_json
from segdiff.config import DataConfig
from segdiff.errors import DataError
from segdiff.metrics.evaluate_classes import evaluate_class_dirs, format_class_table

STREET = [{"name": "Sky", "value": 0}, {"name": "Road", "value": 1}, {"name": "Car", "value": 2}]


def _load(tmp_path, spec) -> ClassSet:
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    return load_classes_json(tmp_path / "classes.json")


def test_background_comes_from_classes_json_not_the_order(tmp_path):
    assert _load(tmp_path, STREET).background is None  # class 0 "Sky" is not taken as background
    marked = [STREET[0], STREET[1] | {"background": True}, STREET[2]]
    assert _load(tmp_path, marked).background_name == "Road"
    # an older file: the class named "background" (any case), wherever it is
    old = [*STREET, {"name": "Background", "value": 9}]
    assert _load(tmp_path, old).background == 3
    # a class named background can be told it is not one
    assert _load(tmp_path, [*STREET[:2], {"name": "background", "value": 9, "background": False}]).background is None
    for spec, msg in (
        ([STREET[0] | {"background": True}, STREET[1] | {"background": True}], "2 classes are marked"),
        ([STREET[0] | {"background": "yes"}, STREET[1]], "'background' must be true or false"),
    ):
        with pytest.raises(DataError, match=msg):
            _load(tmp_path, spec)
    # the run's config keeps it: config dicts and classes.json written by predict read back the same
    for cs in (_load(tmp_path, marked), _load(tmp_path, old), _load(tmp_path, STREET)):
        assert _load(tmp_path, cs.to_json()).background == cs.background
        assert ClassSet.from_config(DataConfig(**cs.to_config())).background == cs.background


def _folders(tmp_path):
    """Two 4 x 4 label maps: Sky (0) on top, Road (1) below, a Car (2); the prediction misses half the sky."""
    gt = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 2, 2], [1, 1, 2, 2]], np.uint8)
    pred = gt.copy()
    pred[0, :2] = pred[1, :2] = 1  # 4 sky pixels taken for road
    for name, arr in (("gt", gt), ("pred", pred)):
        (tmp_path / name).mkdir()
        for stem in ("a", "b"):
            Image.fromarray(arr).save(tmp_path / name / f"{stem}.png")
    return tmp_path / "pred", tmp_path / "gt"


def test_evaluate_fg_means_leave_out_the_named_background_only(tmp_path):
    pred, gt = _folders(tmp_path)
    sky_iou, road_iou, car_iou = 4 / 8, 4 / 8, 1.0
    cs = _load(tmp_path, [STREET[0], STREET[1] | {"background": True}, STREET[2]])
    s = evaluate_class_dirs(pred, gt, cs, out=tmp_path / "ev" / "summary.json")
    assert s["background"] == "Road" and "foreground_means" not in s
    assert s["per_class"]["Sky"]["iou"] == pytest.approx(sky_iou)
    assert s["miou_fg"] == pytest.approx((sky_iou + car_iou) / 2)  # Sky is counted, Road is not
    assert s["miou"] == pytest.approx((sky_iou + road_iou + car_iou) / 3)
    csv = (tmp_path / "ev" / "summary_per_image.csv").read_text()
    assert "miou_fg" in csv.splitlines()[0]
    # no background named: no _fg means (not the means without Sky), and the summary and table say so
    s = evaluate_class_dirs(pred, gt, _load(tmp_path, STREET), out=tmp_path / "ev2" / "summary.json")
    assert s["background"] is None and not any(k.endswith("_fg") for k in s)
    assert "no class is the background" in s["foreground_means"]
    assert json.loads((tmp_path / "ev2" / "summary.json").read_text())["foreground_means"] == s["foreground_means"]
    table = format_class_table(s)
    assert "no class is the background" in table and "mean (foreground)" not in table
    assert "miou_fg" not in (tmp_path / "ev2" / "summary_per_image.csv").read_text().splitlines()[0]
