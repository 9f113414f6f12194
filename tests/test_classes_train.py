"""K = 3 classes through training and prediction: exact resume, tiling, predict and evaluate outputs,
and a slow test that a tiny model learns classes told apart by texture only."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_classes_data, stitch, tiny_config
from segdiff.api import SegDiff
from segdiff.config import apply_overrides
from segdiff.train.loop import train


def _weights(run):
    return [load_file(str(run / f"{n}.safetensors")) for n in ("model", "ema")]


def test_exact_resume_is_bitwise_with_classes_and_ignore(tmp_path):
    data = make_classes_data(tmp_path / "data", splits=(("train", 6), ("val", 2)))
    cfg = apply_overrides(tiny_config(max_steps=4, val_every=2, save_every=2), {"model.dropout": 0.1})
    train(data, tmp_path / "full", cfg, device="cpu", progress=False)
    cfg_a = apply_overrides(tiny_config(max_steps=2, val_every=2, save_every=2), {"model.dropout": 0.1})
    train(data, tmp_path / "part", cfg_a, device="cpu", progress=False)
    cfg_b = apply_overrides(tiny_config(max_steps=4, val_every=2, save_every=2), {"model.dropout": 0.1})
    train(data, tmp_path / "part", cfg_b, resume=True, device="cpu", progress=False)
    for a, b in zip(_weights(tmp_path / "full"), _weights(tmp_path / "part")):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    saved = json.loads((tmp_path / "part" / "config.json").read_text())
    assert saved["model"]["mask_channels"] == 4 and saved["model"]["image_channels"] == 1
    assert [c["name"] for c in saved["data"]["classes"]] == ["background", "stripes", "checks", "speckle"]
    assert saved["data"]["ignore_value"] == 255
    assert load_file(str(tmp_path / "full" / "model.safetensors"))["F.weight"].shape[1] == 4


def _model(K: int = 3, predict_mode: str = "tile", tile_stride=None) -> SegDiff:
    classes = [{"name": f"c{i}", "value": i} for i in range(K)]
    cfg = apply_overrides(
        tiny_config(),
        {
            "model.mask_channels": K,
            "data.classes": classes,
            "predict.mode": predict_mode,
            "predict.tile_stride": tile_stride,
        },
    )
    torch.manual_seed(0)
    model = SegDiff(cfg, "cpu")
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_tiling_with_three_classes():
    from segdiff.predict.ensemble import sample_x0
    from segdiff.predict.tiling import blend_weight, windows

    model = _model(3, "tile", tile_stride=8)
    x = torch.rand(1, 3, 32, 24, generator=torch.Generator().manual_seed(1))
    opts = model.sampling_options(generations=2, steps=2)
    full = model.predict_x0(x, keys=["img"], opts=opts)
    assert full.shape == (1, 2, 3, 32, 24)
    norm = model.normalize(x)
    starts = windows(32, 24, 16, 8)
    per = torch.cat(
        [
            sample_x0(model.net, model.schedule, norm[..., y : y + 16, xx : xx + 16], [("img", "window", i)], opts)
            for i, (y, xx) in enumerate(starts)
        ]
    )
    torch.testing.assert_close(full[0], stitch(per, starts, 32, 24, blend_weight(16)), rtol=1e-4, atol=1e-4)
    # the same windows through the network in groups of one window or all at once
    few = model.predict_x0(x, keys=["img"], opts=model.sampling_options(generations=2, steps=2, batch_generations=2))
    torch.testing.assert_close(few, full, rtol=1e-4, atol=1e-4)
    out = model.predict(x, generations=2, steps=2)
    assert out.mask.shape == (1, 32, 24) and out.prob.shape == (1, 3, 32, 24)


def test_predict_and_evaluate_outputs(tmp_path):
    """predict writes label, colour, per-class probability and uncertainty files; evaluate reads the
    classes from the data root's classes.json and ignores the ignore label."""
    from segdiff.cli import main
    from segdiff.data.classes import read_labels

    data = make_classes_data(tmp_path / "data", splits=(("train", 4), ("test", 2)))
    train(data, tmp_path / "run", tiny_config(max_steps=2, val_every=0), device="cpu", progress=False)
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "run"),
                "--input",
                str(data / "test" / "images"),
                "--out",
                str(pred),
                "--quiet",
                "--save-generations",
            ]
        )
        == 0
    )
    model = SegDiff.load(tmp_path / "run")
    for stem in ("img00", "img01"):
        label = read_labels(pred / "masks" / f"{stem}.png", model.classes)
        assert label.shape == (16, 16) and label.max() < 4
        import tifffile
        from PIL import Image

        prob = tifffile.imread(pred / "prob" / f"{stem}.tif")
        assert prob.shape == (4, 16, 16)
        np.testing.assert_allclose(prob.sum(0), 1, atol=1e-5)
        np.testing.assert_array_equal(prob.argmax(0), label)
        colour = np.asarray(Image.open(pred / "color" / f"{stem}.png"))
        np.testing.assert_array_equal(colour, model.classes.color_image(label))
        ent = tifffile.imread(pred / "uncertainty" / f"{stem}.tif")
        dis = tifffile.imread(pred / "disagreement" / f"{stem}.tif")
        assert ent.shape == dis.shape == (16, 16) and 0 <= dis.min() and dis.max() <= 1
        assert len(list((pred / "generations" / stem).glob("*.png"))) == 2
    out = tmp_path / "ev" / "summary.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(data / "test"), "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["classes"] == ["background", "stripes", "checks", "speckle"]
    assert s["ignored_pixels"] == 2 * (16 + 15)  # the one-pixel border of each mask
    cm = np.loadtxt(tmp_path / "ev" / "summary_confusion.csv", delimiter=",", skiprows=1, usecols=range(1, 5))
    assert cm.sum() == 2 * 16 * 16 - s["ignored_pixels"]
    assert (tmp_path / "ev" / "summary_confusion.png").is_file() and s["calibration"]["n_images"] == 2
    # the same classes from the run's config, with the prediction folder's classes.json gone
    (pred / "classes.json").unlink()
    (data / "classes.json").rename(tmp_path / "classes.json")
    s2 = json.loads(
        json.dumps(
            __import__("segdiff.metrics", fromlist=["x"]).evaluate_dirs(
                pred, data / "test", checkpoint=tmp_path / "run"
            )
        )
    )
    assert s2["miou"] == s["miou"]


def test_four_channel_images_train_predict_and_check_channels(tmp_path):
    """Multi-channel TIFF images: the channel count and per-channel normalisation come from the training
    images; predict refuses images with another channel count, naming the file."""
    from PIL import Image

    from segdiff.errors import DataError
    from segdiff.predict.run import predict_folder

    data = make_classes_data(tmp_path / "data", splits=(("train", 4), ("test", 1)), channels=4, ignore=False)
    train(data, tmp_path / "run", tiny_config(max_steps=1, val_every=0), device="cpu", progress=False)
    model = SegDiff.load(tmp_path / "run")
    cfg = model.config
    assert cfg.model.image_channels == 4 and len(cfg.data.mean) == len(cfg.data.std) == 4
    assert cfg.data.ignore_value is None and cfg.model.mask_channels == 4
    s = predict_folder(model, data / "test" / "images", tmp_path / "pred", generations=1, steps=1, progress=False)
    assert s["predicted"] == 1 and (tmp_path / "pred" / "color" / "img00.png").is_file()
    (tmp_path / "rgb").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb" / "x.png")
    with pytest.raises(DataError, match=r"x\.png: image has 3 channel\(s\) but the model was trained on 4"):
        predict_folder(model, tmp_path / "rgb", tmp_path / "pred2", progress=False)


LEARN_STEPS = 600  # 24 x 24 images: ~0.25 s per step on 2 quiet cores


@pytest.mark.slow
def test_tiny_model_learns_classes_by_texture(tmp_path):
    """The tiny preset on the 3-class texture data (classes differ by texture, not intensity) reaches a
    mean foreground IoU >= 0.5 on test, and >= 0.2 above a per-pixel intensity classifier fitted on train."""
    from segdiff.config import preset
    from segdiff.data.classes import read_labels
    from segdiff.data.folder import pair_split
    from segdiff.data.io import read_image_channels
    from segdiff.demo import apply_intensity_classifier, intensity_classifier, make_classes_dataset
    from segdiff.metrics.evaluate import evaluate_dirs
    from segdiff.predict.run import predict_folder

    data = make_classes_dataset(tmp_path / "data", n_train=128, n_val=8, n_test=16, size=24, channels=1)
    cfg = apply_overrides(  # the tiny network with the short-budget recipe (x0 target, high-noise t)
        preset("tiny-fast"),
        {
            "data.size": 24,
            "train.max_steps": LEARN_STEPS,
            "train.val_every": LEARN_STEPS // 2,
            "train.save_every": LEARN_STEPS,
        },
    )
    train(data, tmp_path / "run", cfg, device="cpu", progress=False)
    model = SegDiff.load(tmp_path / "run", device="cpu")
    predict_folder(model, data / "test" / "images", tmp_path / "pred", batch_images=16, progress=False)
    miou_fg = evaluate_dirs(tmp_path / "pred", data / "test")["miou_fg"]

    def load(split):
        samples = pair_split(data / split)
        return [read_image_channels(s.image) for s in samples], [read_labels(s.mask, model.classes) for s in samples]

    from segdiff.metrics.classes import mean_foreground_iou

    table = intensity_classifier(*load("train"), K=4)
    images, labels = load("test")
    base = mean_foreground_iou([apply_intensity_classifier(table, im) for im in images], labels, 4)
    print(f"\nmean foreground IoU {miou_fg:.3f}, intensity classifier {base:.3f}")
    assert miou_fg >= 0.5
    assert miou_fg >= base + 0.2
