"""`segdiff study` on a tiny random model and 2 images: files, rows, and the first-n mean."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conftest import make_dataset, tiny_config
from segdiff.api import SegDiff
from segdiff.bench.study import first_n_means, parse_sampler
from segdiff.cli import main
from segdiff.data.dataset import load_pair
from segdiff.data.folder import pair_split
from segdiff.errors import UserError
from segdiff.metrics import calibration_score, f1, iou
from segdiff.predict.ensemble import summarise

COLUMNS = [
    "sampler", "method", "variance", "eta", "steps", "generations", "images", "iou", "iou_std", "f1", "f1_std",
    "calibration", "calibration_stderr", "calibration_pooled", "ece", "seconds_per_image", "steps_x_generations",
]  # fmt: skip
PLOTS = [
    "fig4_iou_vs_steps.png", "fig5_iou_vs_generations.png", "fig6_calibration_vs_generations.png",
    "fig9_time_vs_steps.png",
]  # fmt: skip


def test_first_n_means_is_the_mean_of_the_first_n_samples():
    x0 = torch.randn(1, 5, 4, 6).clamp(-1.5, 1.5)
    p = summarise(x0)["samples"][0].numpy()
    probs = first_n_means(p)
    for n in range(1, 6):
        np.testing.assert_allclose(probs[n - 1], summarise(x0[:, :n])["prob"][0].numpy(), rtol=0, atol=1e-6)


def test_parse_sampler():
    assert parse_sampler("ddpm-small").variance == "small"
    assert parse_sampler("ddpm").variance == "large"
    assert parse_sampler("ddim-eta0.5").eta == 0.5
    with pytest.raises(UserError):
        parse_sampler("euler")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    data = make_dataset(root / "data", splits=(("val", 3),))
    torch.manual_seed(0)
    model = SegDiff(tiny_config(), "cpu")
    with torch.no_grad():  # random, not zero, output layer: non-trivial samples
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save(root / "run")
    out = root / "out"
    args = [
        "study", "--checkpoint", str(root / "run"), "--data", str(data / "val"), "--images", "2",
        "--generations", "3", "--steps", "2,3", "--samplers", "ddpm-large,ddim", "--batch-generations", "1",
        "--out", str(out), "--device", "cpu", "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    return root, data / "val", out


def test_study_writes_csv_json_and_plots(study):
    _, _, out = study
    with (out / "study.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert len(rows) == 2 * 2 * 3  # samplers x steps x generations
    assert {(r["sampler"], r["steps"], r["generations"]) for r in rows} == {
        (s, str(k), str(n)) for s in ("ddpm-large", "ddim") for k in (2, 3) for n in (1, 2, 3)
    }
    for r in rows:
        assert r["images"] == "2" and 0 <= float(r["iou"]) <= 1 and float(r["seconds_per_image"]) > 0
    for name in PLOTS:
        assert (out / name).stat().st_size > 1000
    report = json.loads((out / "study.json").read_text())
    assert report["protocol"]["generations"] == 3 and report["protocol"]["steps"] == [2, 3]
    assert len(report["rows"]) == 12 and report["recommendation"] is None  # T = 10 is not in the grid
    with (out / "study_per_image.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2 * 12


def test_study_first_n_row_equals_an_n_generation_prediction(study):
    """The n = 2 row of the 3-generation run equals metrics of a separate 2-generation prediction."""
    root, split, out = study
    model = SegDiff.load(root / "run", device="cpu")
    with (out / "study_per_image.csv").open() as f:
        per_image = list(csv.DictReader(f))
    ious, f1s, cals = [], [], []
    for sample in pair_split(split)[:2]:
        image, mask = load_pair(sample)
        gt = mask[0].numpy() > 0.5
        pred = model.predict(image, generations=2, steps=3, keys=[sample.stem], batch_generations=1)
        prob = pred.prob[0].numpy()
        row = next(
            r for r in per_image
            if (r["image"], r["sampler"], r["steps"], r["generations"]) == (sample.stem, "ddpm-large", "3", "2")
        )  # fmt: skip
        assert float(row["iou"]) == pytest.approx(iou(prob >= 0.5, gt), abs=1e-6)
        assert float(row["calibration"]) == pytest.approx(calibration_score(prob, gt), rel=1e-4, abs=1e-6)
        ious.append(iou(prob >= 0.5, gt))
        f1s.append(f1(prob >= 0.5, gt))
        cals.append(calibration_score(prob, gt))
    with (out / "study.csv").open() as f:
        row = next(
            r for r in csv.DictReader(f) if (r["sampler"], r["steps"], r["generations"]) == ("ddpm-large", "3", "2")
        )
    assert float(row["iou"]) == pytest.approx(np.mean(ious), abs=1e-5)
    assert float(row["f1"]) == pytest.approx(np.mean(f1s), abs=1e-5)
    assert float(row["calibration"]) == pytest.approx(np.mean(cals), rel=1e-4, abs=1e-6)


def test_study_rejects_steps_above_T(study, capsys):
    root, split, out = study
    code = main(["study", "--checkpoint", str(root / "run"), "--data", str(split), "--steps", "11",
                 "--generations", "1", "--out", str(out / "bad"), "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 2 and "T = 10" in capsys.readouterr().err
