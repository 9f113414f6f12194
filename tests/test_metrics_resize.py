"""Predictions resized to the ground truth's native size before scoring (the Cityscapes protocol)."""

import numpy as np
import pytest

from segdiff.cli import main as cli_main
from segdiff.data.io import read_mask, read_prob, write_mask
from segdiff.errors import DataError
from segdiff.metrics.evaluate import evaluate_dirs
from segdiff.metrics.resize import resize_map, resize_to_gt
from segdiff.predict.export import write_prediction


def _disc(h, w, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - (h - 1) / 2) ** 2 / (r * h) ** 2 + (xx - (w - 1) / 2) ** 2 / (r * w) ** 2 <= 1


@pytest.fixture
def folders(tmp_path):
    """Predictions at 16 x 16 (the model's input) and ground truth at native sizes."""
    pred, gt = tmp_path / "pred", tmp_path / "gt" / "masks"
    gt.mkdir(parents=True)
    sizes = {"a": (24, 40), "b": (16, 16), "c": (9, 7)}
    for stem, hw in sizes.items():
        prob = _disc(16, 16, 0.35).astype(np.float32) * 0.9 + 0.05
        write_prediction(pred, stem, prob >= 0.5, prob, np.full((16, 16), 0.1, np.float32))
        write_mask(gt / f"{stem}.png", _disc(*hw, 0.35))
    return pred, gt, sizes


def test_predictions_take_the_ground_truth_size_and_evaluate_runs(folders, tmp_path):
    pred, gt, sizes = folders
    with pytest.raises(DataError, match="size"):
        evaluate_dirs(pred, gt)
    out = tmp_path / "native"
    s = resize_to_gt(pred, gt, out)
    assert s["images"] == 3 and s["resized"] == 2 and s["masks_from_probability"] == 3
    for stem, hw in sizes.items():
        mask = read_mask(out / "masks" / f"{stem}.png")
        prob = read_prob(out / "prob" / f"{stem}.tif")
        assert mask.shape == prob.shape == read_prob(out / "uncertainty" / f"{stem}.tif").shape == hw
        np.testing.assert_array_equal(mask, prob >= 0.5)
    summary = evaluate_dirs(out, gt.parent)
    assert summary["n_images"] == 3 and summary["iou"] > 0.8  # the same ellipse at every size


def test_same_size_is_unchanged(folders, tmp_path):
    pred, gt, _ = folders
    out = tmp_path / "native"
    resize_to_gt(pred, gt, out)
    np.testing.assert_array_equal(read_mask(out / "masks" / "b.png"), read_mask(pred / "masks" / "b.png"))
    np.testing.assert_allclose(read_prob(out / "prob" / "b.tif"), read_prob(pred / "prob" / "b.tif"))


def test_resize_map_is_bilinear_and_stays_in_range():
    up = resize_map(np.array([[0.0, 1.0]], np.float32), (1, 4))
    np.testing.assert_allclose(up, [[0.0, 0.25, 0.75, 1.0]])
    down = resize_map(np.eye(8, dtype=np.float32), (2, 2))
    assert down.shape == (2, 2) and 0 <= down.min() and down.max() <= 1


def test_mask_folder_without_probabilities(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    write_mask(pred / "x.png", np.pad(np.ones((4, 4), bool), 2))  # 8 x 8, centre 4 x 4
    write_mask(gt / "x.png", np.pad(np.ones((8, 8), bool), 4))  # 16 x 16, centre 8 x 8
    s = resize_to_gt(pred, gt, tmp_path / "out")
    assert s["masks_from_probability"] == 0
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "masks" / "x.png"), read_mask(gt / "x.png"))


def test_missing_prediction_names_the_file(folders, tmp_path):
    pred, gt, _ = folders
    write_mask(gt / "zz.png", np.ones((4, 4), bool))
    with pytest.raises(DataError, match="zz"):
        resize_to_gt(pred, gt, tmp_path / "out")


def test_evaluate_cli_keeps_the_resized_predictions(folders, tmp_path, capsys):
    import json

    pred, gt, sizes = folders
    kept, out = tmp_path / "native", tmp_path / "summary.json"
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt.parent), "--resize-to-gt", "--out", str(out)]
    assert cli_main([*args, "--keep-resized", str(kept)]) == 0
    assert "2 of 3" in capsys.readouterr().out
    assert json.loads((kept / "resize.json").read_text())["resized"] == 2
    for stem, hw in sizes.items():  # predict's layout, heat maps included, at the ground truth's size
        assert read_mask(kept / "masks" / f"{stem}.png").shape == hw
        assert (kept / "uncertainty" / f"{stem}.png").is_file()
    summary = json.loads(out.read_text())
    assert summary["inputs"]["pred"] == str((kept / "masks").resolve()) and summary["n_images"] == 3
    assert evaluate_dirs(kept, gt)["iou"] == summary["iou"]
    assert cli_main([*args, "--keep-resized", str(pred)]) == 2  # never into the predictions themselves
    assert cli_main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--keep-resized", str(kept)]) == 2


def test_evaluate_cli_resize_to_gt(folders, tmp_path, capsys):
    pred, gt, _ = folders
    assert cli_main(["evaluate", "--pred", str(pred), "--gt", str(gt.parent)]) == 2  # sizes differ
    out = tmp_path / "summary.json"
    assert cli_main(["evaluate", "--pred", str(pred), "--gt", str(gt.parent), "--resize-to-gt", "--out", str(out)]) == 0
    import json

    assert json.loads(out.read_text())["n_images"] == 3
