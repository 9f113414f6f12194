"""evaluate_dirs on tiny temporary folders: layouts, pairing errors, outputs, policy modes, CLI."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import tifffile

from segdiff.data.io import read_prob, to_u8, write_mask, write_png
from segdiff.errors import DataError, UserError
from segdiff.metrics import cli
from segdiff.metrics.boundary import boundf
from segdiff.metrics.calibration import CalibrationAccumulator
from segdiff.metrics.evaluate import evaluate_dirs, format_table, score_pair, summarize
from segdiff.metrics.overlap import f1, iou
from segdiff.metrics.wcov import wcov_paper, weighted_coverage

H, W = 12, 16


def make_case(rng: np.random.Generator):
    gt = np.zeros((H, W), bool)
    r, c = rng.integers(1, 5), rng.integers(1, 7)
    gt[r : r + 6, c : c + 7] = True
    pred = np.roll(gt, (int(rng.integers(-1, 2)), int(rng.integers(-2, 3))), axis=(0, 1))
    prob = np.clip(pred * 0.8 + rng.random((H, W)) * 0.2, 0, 1).astype(np.float32)
    return pred, gt, prob


@pytest.fixture
def folders(tmp_path):
    """ROOT/test/{images,masks} and a predict-style PRED/{masks,prob} with 3 images."""
    rng = np.random.default_rng(0)
    split, pred_dir = tmp_path / "data" / "test", tmp_path / "pred"
    for d in (split / "images", split / "masks", pred_dir / "masks", pred_dir / "prob"):
        d.mkdir(parents=True)
    cases = {}
    for stem in ("a", "b", "c"):
        pred, gt, prob = make_case(rng)
        cases[stem] = (pred, gt, prob)
        write_png(split / "images" / f"{stem}.png", np.zeros((H, W, 3), np.uint8))
        write_mask(split / "masks" / f"{stem}.png", gt)
        write_mask(pred_dir / "masks" / f"{stem}.png", pred)
        tifffile.imwrite(str(pred_dir / "prob" / f"{stem}.tif"), prob)
        # the 8-bit copy predict also writes; deliberately different so preferring it would show
        write_png(pred_dir / "prob" / f"{stem}.png", to_u8(1.0 - prob))
    return split, pred_dir, cases


def test_evaluate_predict_layout_matches_metric_functions(folders, tmp_path):
    split, pred_dir, cases = folders
    out = tmp_path / "results" / "summary.json"
    s = evaluate_dirs(pred_dir, split, out=out)
    assert s["n_images"] == 3
    exp = {
        "iou": np.mean([iou(p, g) for p, g, _ in cases.values()]),
        "f1": np.mean([f1(p, g) for p, g, _ in cases.values()]),
        "wcov": np.mean([wcov_paper(p, g) for p, g, _ in cases.values()]),
        "weighted_coverage": np.mean([weighted_coverage(p, g) for p, g, _ in cases.values()]),
        "boundf": np.mean([boundf(p, g) for p, g, _ in cases.values()]),
    }
    for key, value in exp.items():
        assert s[key] == pytest.approx(value), key
    assert s["iou"] < 1.0  # the cases are not trivial
    assert set(s["boundf_px"]) == {"1", "2", "3", "4", "5"}
    assert np.mean(list(s["boundf_px"].values())) == pytest.approx(s["boundf"])
    tp = sum(int((p & g).sum()) for p, g, _ in cases.values())
    union = sum(int((p | g).sum()) for p, g, _ in cases.values())
    assert s["iou_pooled"] == pytest.approx(tp / union)
    # probabilities found automatically in PRED/prob, and the float TIFF preferred over the PNG
    acc = CalibrationAccumulator()
    for _, g, q in cases.values():
        acc.add(q, g)
    ref = acc.summary()
    for key in ("mean", "stderr", "pooled", "ece"):
        assert s["calibration"][key] == pytest.approx(ref[key]), key
    assert s["policy"]["mode"] == "default" and s["warnings"] == []

    on_disk = json.loads(out.read_text())
    assert on_disk["iou"] == pytest.approx(s["iou"]) and on_disk["calibration"]["ece"] == pytest.approx(ref["ece"])
    with open(tmp_path / "results" / "summary_per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stem"] for r in rows] == ["a", "b", "c"]
    assert float(rows[1]["iou"]) == pytest.approx(iou(*cases["b"][:2]))
    assert (tmp_path / "results" / "summary_reliability.png").stat().st_size > 1000
    # written atomically: no temporary file left beside them
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "summary.json",
        "summary_per_image.csv",
        "summary_reliability.png",
    ]
    table = format_table(s)
    assert f"{100 * s['iou']:6.2f} %" in table and "Calibration" in table


def test_plain_folders_and_explicit_png_prob(folders, tmp_path):
    split, pred_dir, cases = folders
    png_only = tmp_path / "png_prob"
    png_only.mkdir()
    for stem in cases:
        (png_only / f"{stem}.png").write_bytes((pred_dir / "prob" / f"{stem}.png").read_bytes())
    s = evaluate_dirs(pred_dir / "masks", split / "masks", prob=png_only)
    acc = CalibrationAccumulator()
    for stem, (_, g, _) in cases.items():
        acc.add(read_prob(png_only / f"{stem}.png"), g)
    assert s["calibration"]["mean"] == pytest.approx(acc.summary()["mean"])
    assert read_prob(png_only / "a.png") == pytest.approx(1.0 - cases["a"][2], abs=1 / 255)
    # no probabilities: plain mask folders give no calibration and write nothing
    s2 = evaluate_dirs(pred_dir / "masks", split / "masks")
    assert s2["calibration"] is None and "outputs" not in s2
    assert s2["iou"] == pytest.approx(s["iou"])


def test_read_prob_npy_and_range(tmp_path):
    q = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "q.npy", q)
    np.testing.assert_array_equal(read_prob(tmp_path / "q.npy"), q)
    tifffile.imwrite(str(tmp_path / "bad.tif"), q * 2)
    with pytest.raises(DataError, match="bad.tif"):
        read_prob(tmp_path / "bad.tif")


def test_unpaired_files_raise_naming_the_file(folders):
    split, pred_dir, _ = folders
    write_mask(split / "masks" / "extra.png", np.zeros((H, W), bool))
    with pytest.raises(DataError, match=r"extra\.png: no predicted mask with stem 'extra'"):
        evaluate_dirs(pred_dir, split)
    (split / "masks" / "extra.png").unlink()
    write_mask(pred_dir / "masks" / "lonely.png", np.zeros((H, W), bool))
    with pytest.raises(DataError, match=r"lonely\.png: no ground-truth mask with stem 'lonely'"):
        evaluate_dirs(pred_dir, split)
    (pred_dir / "masks" / "lonely.png").unlink()
    for p in (pred_dir / "prob").glob("b.*"):
        p.unlink()
    with pytest.raises(DataError, match="probability map with stem 'b'"):
        evaluate_dirs(pred_dir, split)


def test_size_mismatch_raises_naming_both_files(folders):
    split, pred_dir, _ = folders
    write_mask(pred_dir / "masks" / "b.png", np.ones((H + 1, W), bool))
    with pytest.raises(DataError, match=r"pred[/\\]masks[/\\]b\.png.*masks[/\\]b\.png"):
        evaluate_dirs(pred_dir, split)


def test_prob_size_mismatch_raises(folders):
    split, pred_dir, _ = folders
    tifffile.imwrite(str(pred_dir / "prob" / "c.tif"), np.zeros((H, W + 2), np.float32))
    with pytest.raises(DataError, match=r"c\.tif.*c\.png"):
        evaluate_dirs(pred_dir, split)


def test_non_binary_gt_mask_raises(folders):
    split, pred_dir, _ = folders
    write_png(split / "masks" / "a.png", np.arange(H * W, dtype=np.uint8).reshape(H, W) % 3)
    with pytest.raises(DataError, match=r"a\.png.*not binary"):
        evaluate_dirs(pred_dir, split)


def test_out_must_be_a_json_file(folders, tmp_path):
    split, pred_dir, _ = folders
    with pytest.raises(UserError, match="json"):
        evaluate_dirs(pred_dir, split, out=tmp_path)


@pytest.fixture
def empty_case(tmp_path):
    """Image 'e': both masks empty; 'g': gt empty, prediction not; 'n': a normal image."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    empty, sq = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    sq[2:6, 2:6] = True
    for stem, p, g in (("e", empty, empty), ("g", sq, empty), ("n", sq, sq)):
        write_mask(pred_dir / f"{stem}.png", p)
        write_mask(gt_dir / f"{stem}.png", g)
    return pred_dir, gt_dir


def test_empty_masks_default_policy(empty_case):
    s = evaluate_dirs(*empty_case)
    # e: 1, g: 0, n: 1 for each overlap metric
    for key in ("iou", "f1", "wcov", "weighted_coverage", "boundf"):
        assert s[key] == pytest.approx(2 / 3), key
    assert s["iou_pooled"] == pytest.approx(16 / 32)
    assert (s["counts"]["both_empty"], s["counts"]["gt_empty"], s["counts"]["pred_empty"]) == (1, 2, 1)
    assert len(s["warnings"]) == 1 and "empty ground-truth" in s["warnings"][0]


def test_empty_masks_paper_compat(empty_case, tmp_path):
    out = tmp_path / "compat.json"
    s = evaluate_dirs(*empty_case, out=out, paper_compat=True)
    for key in ("iou", "f1", "wcov"):  # e now scores 0
        assert s[key] == pytest.approx(1 / 3), key
    assert s["weighted_coverage"] == pytest.approx(2 / 3)  # not in the authors' code: unchanged
    assert s["boundf"] == pytest.approx(2 / 3)  # DAVIS conventions in both modes
    assert s["policy"]["mode"] == "paper_compat"
    assert any("WCov" in w and "(e)" in w for w in s["warnings"])
    assert json.loads(out.read_text())["warnings"] == s["warnings"]
    assert not (tmp_path / "compat_reliability.png").exists()  # no probabilities, no diagram


def test_cli_evaluate(folders, tmp_path, capsys):
    split, pred_dir, _ = folders
    parser = argparse.ArgumentParser(prog="segdiff")
    cli.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli" / "summary.json"
    args = parser.parse_args(["evaluate", "--pred", str(pred_dir), "--gt", str(split), "--out", str(out)])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "IoU" in printed and "BoundF" in printed and str(out) in printed
    assert json.loads(out.read_text())["n_images"] == 3
    args = parser.parse_args(["evaluate", "--pred", str(pred_dir), "--gt", str(split), "--paper-compat"])
    assert args.paper_compat and args.prob is None


def test_summarize_in_memory_rows_matches_evaluate_dirs(folders):
    split, pred_dir, cases = folders
    rows = [{"stem": stem, **score_pair(p, g)} for stem, (p, g, _) in cases.items()]
    s = summarize(rows)
    ref = evaluate_dirs(pred_dir / "masks", split)
    for key in ("iou", "f1", "iou_pooled", "f1_pooled", "wcov", "weighted_coverage", "boundf", "counts"):
        assert s[key] == pytest.approx(ref[key]), key
    with pytest.raises(ValueError, match="no images"):
        summarize([])
