"""Multi-class masks and image channels (issue 12): classes.json and the scan, mask formats, the ignore
label, bad values, channel counts; the K-class model, loss, ensemble summary, outputs and metrics."""

import json
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import tiny_config
from segdiff.api import SegDiff
from segdiff.classset import IGNORE_INDEX, load_classes_json
from segdiff.config import apply_overrides
from segdiff.data.classes import read_labels, resolve_classes
from segdiff.data.io import channels_last, match_channels, read_image_channels
from segdiff.errors import DataError, UserError
from segdiff.metrics.classes import class_boundary_f, confusion_matrix, iou_dice, score_classes, summarize_classes
from segdiff.predict.ensemble import class_distribution, summarise_classes

LABEL = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 2, 0]], np.uint8)


def _classes(tmp_path, spec) -> object:
    (tmp_path / "classes.json").write_text(json.dumps(spec))
    return load_classes_json(tmp_path / "classes.json")


def _split_masks(root, masks):
    for split, ms in masks.items():
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(ms):
            Image.fromarray(m).save(root / split / "masks" / f"m{i}.png")


# -- which data is multi-class ----------------------------------------------------------------------


def test_scan_two_values_is_binary_more_is_multiclass(tmp_path):
    _split_masks(tmp_path / "a", {"train": [np.array([[0, 255]], np.uint8)], "test": [np.zeros((1, 2), np.uint8)]})
    assert resolve_classes(tmp_path / "a") is None  # the paper's binary path
    # values spread over splits: the scan takes the union of train, val and test
    _split_masks(tmp_path / "b", {"train": [np.array([[0, 10]], np.uint8)], "test": [np.array([[0, 20]], np.uint8)]})
    cs = resolve_classes(tmp_path / "b")
    assert cs.K == 3 and cs.values == (0, 10, 20) and cs.names[0] == "class 0"


def test_classes_json_forms_and_errors(tmp_path):
    cs = _classes(tmp_path, {"classes": [{"name": "bg", "value": 0}, {"name": "a", "value": 5}], "ignore": 255})
    assert (cs.K, cs.values, cs.ignore_value) == (2, (0, 5), 255)
    cs = _classes(tmp_path, [{"name": "bg", "color": [0, 0, 0]}, {"name": "a", "color": [255, 0, 0]}])
    assert cs.colors_given and not cs.by_value
    cs = _classes(tmp_path, {"classes": [{"value": 0}, {"value": 1}], "ignore": {"color": [9, 9, 9]}})
    assert cs.ignore_color == (9, 9, 9)
    bad = [
        ({"classes": [{"name": "x", "value": 0}]}, "between 2 and"),
        ({"classes": [{"name": "x"}, {"name": "y", "value": 1}]}, "needs a 'value' or a 'color'"),
        ({"classes": [{"value": 0}, {"value": 0}]}, "share the value 0"),
        ({"classes": [{"value": 0}, {"value": 1}], "ignore": 1}, "ignore value 1 is also"),
        ({"classes": [{"value": 0}, {"value": 1, "color": [1, 2]}]}, r"\[r, g, b\]"),
        ({"classes": [{"value": 0}, {"value": -1}]}, "non-negative integer"),
        ({"classes": [{"value": 0}, {"value": 1}], "extra": 1}, "unknown key"),
    ]
    for spec, msg in bad:
        with pytest.raises(DataError, match=msg):
            _classes(tmp_path, spec)
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(DataError, match=r"classes\.json: not valid JSON"):
        load_classes_json(tmp_path / "classes.json")


def test_mask_formats_give_the_same_labels(tmp_path):
    """8-bit and 16-bit label PNG and TIFF, palette PNG (palette index = value), RGB colour-coded."""
    values = np.array([0, 1, 2, 3])
    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    cs = _classes(
        tmp_path, [{"name": f"c{i}", "value": int(v), "color": list(c)} for i, (v, c) in enumerate(zip(values, colors))]
    )
    Image.fromarray(LABEL).save(tmp_path / "u8.png")
    Image.fromarray(LABEL.astype(np.uint16)).save(tmp_path / "u16.png")
    tifffile.imwrite(tmp_path / "u16.tif", LABEL.astype(np.uint16))
    pal = Image.fromarray(LABEL, mode="P")
    pal.putpalette([200, 200, 200, 10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 756)  # colours are not the values
    pal.save(tmp_path / "pal.png")
    Image.fromarray(np.asarray(colors, np.uint8)[LABEL]).save(tmp_path / "rgb.png")
    for name in ("u8.png", "u16.png", "u16.tif", "pal.png", "rgb.png"):
        np.testing.assert_array_equal(read_labels(tmp_path / name, cs), LABEL, err_msg=name)
    # 16-bit values above 255
    cs16 = _classes(tmp_path, [{"value": 0}, {"value": 1000}, {"value": 40000}])
    m = np.array([[0, 1000, 40000]], np.uint16)
    Image.fromarray(m).save(tmp_path / "big.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "big.png", cs16), [[0, 1, 2]])
    np.testing.assert_array_equal(cs16.value_image(np.array([[0, 1, 2]])), m)


def test_ignore_and_bad_values(tmp_path):
    cs = _classes(tmp_path, {"classes": [{"value": 0}, {"value": 1}, {"value": 2}], "ignore": 255})
    m = np.array([[0, 1, 2, 255]], np.uint8)
    Image.fromarray(m).save(tmp_path / "ok.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "ok.png", cs), [[0, 1, 2, IGNORE_INDEX]])
    m[0, 0] = 7
    Image.fromarray(m).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png: mask value 7 at 1 pixel\(s\) is neither a class \(0, 1, 2\) nor"):
        read_labels(tmp_path / "bad.png", cs)
    rgb = _classes(tmp_path, [{"color": [0, 0, 0]}, {"color": [255, 0, 0]}])
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (1, 2, 3)
    Image.fromarray(img).save(tmp_path / "badrgb.png")
    with pytest.raises(DataError, match=r"badrgb\.png: mask colour \[1, 2, 3\]"):
        read_labels(tmp_path / "badrgb.png", rgb)
    # colour-coded masks without a classes.json: an error that says what to write
    (tmp_path / "d" / "train" / "masks").mkdir(parents=True)
    Image.fromarray(img).save(tmp_path / "d" / "train" / "masks" / "x.png")
    with pytest.raises(DataError, match=r"x\.png: colour-coded mask.*classes\.json"):
        resolve_classes(tmp_path / "d")


# -- image channels ---------------------------------------------------------------------------------


def test_image_channels_any_count(tmp_path):
    rng = np.random.default_rng(0)
    grey = (rng.random((6, 9)) * 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    assert read_image_channels(tmp_path / "g.png").shape == (6, 9, 1)
    rgba = (rng.random((6, 9, 4)) * 255).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image_channels(tmp_path / "rgba.png"), rgba[..., :3] / np.float32(255))
    five = (rng.random((5, 6, 9)) * 65535).astype(np.uint16)  # channels first
    tifffile.imwrite(tmp_path / "first.tif", five, photometric="minisblack")
    a = read_image_channels(tmp_path / "first.tif")
    assert a.shape == (6, 9, 5) and a.dtype == np.float32
    np.testing.assert_allclose(a, np.moveaxis(five, 0, -1) / 65535, rtol=1e-6)
    tifffile.imwrite(tmp_path / "last.tif", np.moveaxis(five, 0, -1), photometric="minisblack", planarconfig="contig")
    np.testing.assert_allclose(read_image_channels(tmp_path / "last.tif"), a)
    f = rng.random((2, 7, 8)).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", f, photometric="minisblack")
    np.testing.assert_allclose(read_image_channels(tmp_path / "float.tif"), np.moveaxis(f, 0, -1))
    with pytest.raises(DataError, match="cannot tell the channel axis"):
        channels_last(np.zeros((4, 9, 4)), "amb.tif")
    with pytest.raises(DataError, match=r"x\.tif: image has 5 channel\(s\) but the model was trained on 3"):
        match_channels(a, 3, "x.tif")
    assert match_channels(np.zeros((2, 2, 1)), 3).shape == (2, 2, 3)  # grey for an RGB model: replicated


def test_predict_checks_the_channel_count(tmp_path):
    cfg = apply_overrides(tiny_config(), {"model.image_channels": 4})
    model = SegDiff(cfg, "cpu")
    assert model.predict(torch.rand(4, 16, 16), generations=1, steps=1).mask.shape == (1, 16, 16)
    with pytest.raises(UserError, match=r"trained on 4-channel images.*\(1, 3, 16, 16\)"):
        model.predict(torch.rand(3, 16, 16), generations=1, steps=1)
    from segdiff.predict.run import predict_folder

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in" / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png: image has 3 channel\(s\) but the model was trained on 4"):
        predict_folder(model, tmp_path / "in", tmp_path / "out", progress=False)


# -- model, ensemble, metrics -----------------------------------------------------------------------


def test_class_distribution_and_summary():
    x0 = torch.tensor([1.0, -1.0, -1.0]).view(1, 1, 3, 1, 1).repeat(1, 4, 1, 1, 1)  # [B=1, G=4, K=3, 1, 1]
    x0[0, 3] = torch.tensor([-1.0, 0.0, -3.0]).view(3, 1, 1)  # one generation says class 1
    s = summarise_classes(x0)
    torch.testing.assert_close(s["prob"][0, :, 0, 0], torch.tensor([0.75, 0.25, 0.0]))
    assert int(s["label"][0, 0, 0]) == 0 and float(s["disagreement"][0, 0, 0]) == 0.25
    expect = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert float(s["entropy"][0, 0, 0]) == pytest.approx(expect, rel=1e-5)
    # every channel at -1 or below: uniform
    torch.testing.assert_close(class_distribution(torch.full((3, 1, 1), -2.0))[:, 0, 0], torch.full((3,), 1 / 3))


def test_multiclass_model_loss_ignore_and_predict():
    classes = [{"name": "a", "value": 0}, {"name": "b", "value": 1}, {"name": "c", "value": 2}]
    cfg = apply_overrides(tiny_config(), {"model.mask_channels": 3, "data.classes": classes})
    torch.manual_seed(0)
    model = SegDiff(cfg, "cpu")
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    image = torch.rand(2, 3, 16, 16)
    label = torch.randint(0, 3, (2, 16, 16))
    g = torch.Generator().manual_seed(1)
    t, eps = torch.randint(10, (2,), generator=g), torch.randn(2, 3, 16, 16, generator=g)
    base = model.loss(image, label, t=t, eps=eps)
    # ignored pixels do not count: changing the label there does not change the loss
    ign = label.clone()
    ign[:, :8] = 255
    other = ign.clone()
    other[:, :8] = 254
    assert torch.equal(model.loss(image, ign, t=t, eps=eps), model.loss(image, other, t=t, eps=eps))
    assert not torch.equal(model.loss(image, ign, t=t, eps=eps), base)
    out = model.predict(image, generations=3, steps=2, return_samples=True)
    assert out.mask.shape == (2, 16, 16) and out.prob.shape == (2, 3, 16, 16)
    assert out.samples.shape == (2, 3, 3, 16, 16) and out.disagreement.shape == (2, 16, 16)
    torch.testing.assert_close(out.prob.sum(1), torch.ones(2, 16, 16))
    assert torch.equal(out.mask, out.prob.argmax(1)) and out.classes == ("a", "b", "c")
    assert float(out.uncertainty.max()) <= np.log(3) + 1e-5
    assert out.kind == "classes" and out.entropy is out.uncertainty and out.std is None
    # resize mode: the K maps are resized with the generations
    model.config = apply_overrides(model.config, {"predict.mode": "resize"})
    assert model.predict(torch.rand(1, 3, 20, 12), generations=2, steps=1).prob.shape == (1, 3, 20, 12)


def test_class_metrics():
    gt = np.array([[0, 0, 1, 1], [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 0, 2]])
    cm = confusion_matrix(pred, gt, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 2, 0], [1, 0, 1]])  # the ignored pixel is not counted
    iou, dice = iou_dice(cm)
    np.testing.assert_allclose(iou, [2 / 4, 2 / 3, 1 / 2])
    np.testing.assert_allclose(dice, [4 / 6, 4 / 5, 2 / 3])
    # a class absent from both has no score, and is left out of the means
    iou2, _ = iou_dice(confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), 3))
    assert iou2[0] == 1 and np.isnan(iou2[1:]).all()
    s = summarize_classes(
        [score_classes(pred, gt, 3), score_classes(np.zeros((2, 4), int), np.zeros((2, 4), int), 3)],
        ["bg", "x", "y"],
        0,
    )
    assert s["per_class"]["x"]["iou"] == pytest.approx(2 / 3) and s["per_class"]["x"]["images"] == 1
    assert s["per_class"]["bg"]["iou"] == pytest.approx((0.5 + 1) / 2)
    assert s["miou_fg"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["miou"] == pytest.approx((0.75 + 2 / 3 + 1 / 2) / 3)
    assert s["per_class"]["x"]["iou_pooled"] == pytest.approx(2 / 3)
    assert s["per_class"]["bg"]["iou_pooled"] == pytest.approx(10 / 12)
    # boundary F per class: a perfect prediction scores 1 for present classes, NaN for absent ones
    lab = np.zeros((12, 12), int)
    lab[2:6, 2:6] = 1
    bf = class_boundary_f(lab, lab, 3)
    assert bf[0] == bf[1] == 1 and np.isnan(bf[2])


def test_batches_of_labels_one_hot_ignore_and_resampling(tmp_path):
    """Training batches: K one-hot channels in {-1, 1}, 0 and valid = 0 on ignored pixels; geometric
    augmentation and resizing keep labels one-hot (largest channel), the ignore label included."""
    from conftest import make_classes_data
    from segdiff.classset import ClassSet
    from segdiff.config import AugmentConfig
    from segdiff.data.dataset import TrainBatches, make_splits
    from segdiff.data.transforms import resize_labels
    from segdiff.train.loop import with_data_shape

    root = make_classes_data(tmp_path / "d", splits=(("train", 3),), size=16)
    cfg = replace(
        tiny_config(),
        data=replace(tiny_config().data, augment=AugmentConfig(scale=(0.8, 1.2), rotate=30.0, hflip=True)),
    )
    splits = make_splits(root, 0.0, 0)
    cfg = with_data_shape(cfg, root, splits.train)
    assert cfg.model.mask_channels == 4 and cfg.model.image_channels == 1
    b = TrainBatches(splits.train, cfg.data, 10, 0, channels=1)
    image, x0, t, eps, valid = b.batch(3, 4)
    assert image.shape == (4, 1, 16, 16) and x0.shape == eps.shape == (4, 4, 16, 16) and valid.shape == (4, 1, 16, 16)
    assert set(x0.unique().tolist()) <= {-1.0, 0.0, 1.0}
    on = (x0 == 1).sum(1, keepdim=True)
    assert torch.equal(on, valid.long())  # exactly one class where valid, none where ignored
    assert 0 < valid.mean() < 1  # the ignored border (rotated) is there
    cs = ClassSet.from_config(cfg.data)
    lab = torch.tensor([[[[0, 0, 1, 1], [2, 2, 255, 255], [3, 3, 1, 1], [3, 0, 0, 0]]]], dtype=torch.uint8)
    assert torch.equal(resize_labels(lab, (2, 2), cs.K), torch.tensor([[[[0, 1], [3, 0]]]], dtype=torch.uint8))
    up = resize_labels(lab, (8, 8), cs.K)
    assert set(up.unique().tolist()) == {0, 1, 2, 3, 255}
