"""Volumes in the nnU-Net v2 layout (issue 21): reading, slicing, training batches, whole-volume prediction,
3D scores and the bad-input errors. Synthetic volumes written with nibabel: a rotated affine with an offset,
1 x 1 x 3 mm voxels, two modalities, K = 3 (segdiff.demo_volumes)."""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import replace

import nibabel as nib  # the medical extra, which dev pulls: CI tests it
import numpy as np
import pytest
import torch

from segdiff.config import preset
from segdiff.data.nnunet import group_cases, list_cases, read_dataset_json, split_cases
from segdiff.data.volume import (
    VolumeBatches,
    from_slices,
    load_case,
    to_slices,
    volume_training,
    with_volume_shape,
)
from segdiff.data.volume_io import read_array, read_info, write_like
from segdiff.demo_volumes import case_affine, make_volume_dataset
from segdiff.errors import DataError

SHAPE = (16, 16, 6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_volume_dataset(tmp_path_factory.mktemp("vol") / "Dataset001_E", n_train=5, n_test=2, shape=SHAPE)


def small_config(**train):
    cfg = preset("tiny")
    t = dict(max_steps=2, batch_size=4, val_every=0, save_every=0, val_max_images=2, warmup_steps=0) | train
    return replace(cfg, data=replace(cfg.data, size=16), train=replace(cfg.train, **t)).validate()


def copy_dataset(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# -- reading and slicing ------------------------------------------------------------------------------
def test_dataset_json_cases_and_classes(dataset):
    ds, cases = list_cases(dataset)
    assert ds.channel_names == ("T1", "T2") and ds.classes.K == 3 and ds.classes.values == (0, 1, 2)
    assert len(cases) == 5 and all(len(c.images) == 2 and c.label is not None for c in cases)
    assert [p.name for p in cases[0].images] == ["ellipsoid_tr000_0000.nii.gz", "ellipsoid_tr000_0001.nii.gz"]
    info = read_info(cases[0].images[0])
    assert info.shape == SHAPE and np.allclose(info.spacing, (1, 1, 3)) and np.allclose(info.affine, case_affine())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slicing_and_restacking_round_trip_bitwise(dataset, tmp_path, axis):
    _, cases = list_cases(dataset)
    vol = read_array(cases[0].images[0])
    two = np.stack([vol, vol * 2])
    assert np.array_equal(from_slices(to_slices(vol, axis), axis), vol)
    # slice by slice as predict does ([C, n, a, b] in, maps [n, a, b] and [n, a, b, K] out), restacked
    slices = to_slices(two, axis)
    assert np.array_equal(from_slices(np.stack([slices[0, z] for z in range(len(slices[0]))]), axis), vol)
    per_class = np.stack([np.moveaxis(slices[:, z], 0, -1) for z in range(slices.shape[1])])
    assert np.array_equal(from_slices(per_class, axis), np.moveaxis(two, 0, -1))
    # written with the input's geometry and read back: the same voxels, the same affine and header codes
    write_like(tmp_path / "x.nii.gz", vol, cases[0].images[0])
    back = nib.load(str(tmp_path / "x.nii.gz"))
    ref = nib.load(str(cases[0].images[0]))
    assert np.array_equal(np.asarray(back.dataobj), vol) and np.array_equal(back.affine, ref.affine)
    assert int(back.header["sform_code"]) == int(ref.header["sform_code"])


def test_slice_axis_is_the_largest_spacing_and_a_field_overrides_it(dataset):
    ds, cases = list_cases(dataset)
    cfg = with_volume_shape(small_config(), ds, cases, 0)
    assert cfg.data.volume.slice_axis == 2  # 1 x 1 x 3 mm
    assert cfg.model.image_channels == 2 and cfg.model.mask_channels == 3
    assert [s["scheme"] for s in cfg.data.volume.intensity] == ["zscore", "zscore"]
    cfg1 = small_config()
    cfg1 = replace(cfg1, data=replace(cfg1.data, volume=replace(cfg1.data.volume, slice_axis=0)))
    assert with_volume_shape(cfg1, ds, cases, 0).data.volume.slice_axis == 0
    image, label = load_case(cases[0], cfg.data.volume.intensity, 2, ds.classes)
    assert image.shape == (2, 6, 16, 16) and label.shape == (6, 16, 16)
    assert abs(float(image[0].mean())) < 1e-4 and abs(float(image[0].std()) - 1) < 1e-3  # z-score per case


def test_ct_normalisation_uses_training_foreground_statistics(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path / "ct")
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "CT", "1": "T2"}
    (root / "dataset.json").write_text(json.dumps(meta))
    ds, cases = list_cases(root)
    spec = with_volume_shape(small_config(), ds, cases, 0).data.volume.intensity
    assert spec[0]["scheme"] == "ct" and spec[1]["scheme"] == "zscore"
    fg = np.concatenate([read_array(c.images[0])[read_array(c.label) > 0] for c in cases]).astype(np.float64)
    assert math.isclose(spec[0]["mean"], fg.mean(), rel_tol=1e-6)  # < 10000 voxels a case: all of them
    assert math.isclose(spec[0]["high"], np.percentile(fg, 99.5), rel_tol=1e-6)
    image, _ = load_case(cases[0], spec, 2)
    raw = np.clip(read_array(cases[0].images[0]), spec[0]["low"], spec[0]["high"])
    assert np.allclose(to_slices(raw, 2), image[0] * spec[0]["std"] + spec[0]["mean"], atol=1e-3)


# -- training data ----------------------------------------------------------------------------------
def test_split_is_by_case(dataset):
    _, cases = list_cases(dataset)
    train, val = split_cases(cases, 0.4, seed=3)
    assert len(val) == 2 and not {c.stem for c in train} & {c.stem for c in val}
    assert split_cases(cases, 0.4, seed=3) == (train, val)  # seeded
    splits, cfg, batches, val_pairs = volume_training(
        dataset, replace(small_config(), data=replace(small_config().data, val_fraction=0.4)), resume=False
    )
    assert {c.stem for c in splits.val}.isdisjoint(c.stem for c in splits.train)
    assert {batches.cache.cases[i].stem for i, _ in batches.all} == {c.stem for c in splits.train}
    assert val_pairs and all(im.shape == (2, 16, 16) for im, _ in val_pairs)


def test_foreground_slices_oversampled_and_empty_slices_still_seen(dataset):
    ds, cases = list_cases(dataset)
    base = with_volume_shape(small_config(), ds, cases, 0)

    def draws(fraction):
        cfg = replace(base.data, volume=replace(base.data.volume, foreground_fraction=fraction))
        b = VolumeBatches(cases, cfg, 100, seed=0)
        fg = set(b.fg)
        picked = []
        for j in range(200):  # the draw of sample (step 0, j): the same rule as VolumeBatches.sample
            g = __import__("segdiff").rng.generator(0, 0, j)
            pool = b.fg if float(torch.rand((), generator=g)) < fraction else b.all
            picked.append(pool[int(torch.randint(len(pool), (), generator=g))] in fg)
        return b, np.mean(picked)

    b, all_fg = draws(1.0)
    assert len(b.fg) < len(b.all) and all_fg == 1.0
    _, some = draws(0.5)
    assert 0.5 < some < 1.0  # more than the share of foreground slices, yet empty ones are drawn
    image, x0, t, eps, valid = b.batch(0, 4)
    assert image.shape == (4, 2, 16, 16) and x0.shape == (4, 3, 16, 16) and valid.shape == (4, 1, 16, 16)
    assert torch.equal(b.batch(5, 4)[0], b.batch(5, 4)[0])  # keyed by (seed, step, index)


# -- predict and evaluate -----------------------------------------------------------------------------
def untrained(dataset):
    from segdiff.model import build_network
    from segdiff.predict.predictor import Predictor

    ds, cases = list_cases(dataset)
    cfg = with_volume_shape(small_config(), ds, cases, 0)
    torch.manual_seed(0)
    return Predictor(cfg, build_network(cfg, "cpu"), "cpu")


def test_predicted_volumes_keep_the_input_geometry(dataset, tmp_path):
    from segdiff.predict.volume import predict_volumes

    s = predict_volumes(
        untrained(dataset), dataset / "imagesTs", tmp_path / "pred", progress=False, generations=2, steps=2
    )
    assert s["predicted"] == 2 and s["slices"] == 12
    ref = nib.load(str(dataset / "imagesTs" / "ellipsoid_ts000_0000.nii.gz"))
    for sub, shape in (("", SHAPE), ("prob/", (*SHAPE, 3)), ("uncertainty/", SHAPE)):
        img = nib.load(str(tmp_path / "pred" / f"{sub}ellipsoid_ts000.nii.gz"))
        assert img.shape == shape and np.array_equal(img.affine, ref.affine)
        assert np.allclose(img.header.get_zooms()[:3], (1, 1, 3))
    label = np.asarray(nib.load(str(tmp_path / "pred" / "ellipsoid_ts000.nii.gz")).dataobj)
    prob = np.asarray(nib.load(str(tmp_path / "pred" / "prob" / "ellipsoid_ts000.nii.gz")).dataobj)
    assert np.array_equal(label, prob.argmax(-1))  # labels 0, 1, 2 are the class indices here
    assert (tmp_path / "pred" / "montage" / "ellipsoid_ts000.png").is_file()
    # a rerun skips finished cases; one case's file alone predicts that case
    assert (
        predict_volumes(
            untrained(dataset), dataset / "imagesTs", tmp_path / "pred", progress=False, generations=1, steps=1
        )["skipped"]
        == 2
    )
    one = predict_volumes(
        untrained(dataset),
        dataset / "imagesTs" / "ellipsoid_ts001_0001.nii.gz",
        tmp_path / "one",
        progress=False,
        generations=1,
        steps=1,
    )
    assert one["cases"] == 1 and (tmp_path / "one" / "ellipsoid_ts001.nii.gz").is_file()


# -- bad input --------------------------------------------------------------------------------------
def rewrite(path, array, affine):
    nib.save(nib.Nifti1Image(array, affine), str(path))


def test_bad_label_volumes_are_errors_naming_the_file(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path / "bad")
    _, cases = list_cases(root)
    label = cases[0].label
    good = read_array(label, np.uint8)
    rewrite(label, good[:, :, :-1], case_affine())
    with pytest.raises(DataError, match=rf"{label.name}.*shape \(16, 16, 5\) differs"):
        load_case(cases[0], ({"scheme": "zscore"},) * 2, 2)
    rewrite(label, good, case_affine(angle_deg=31))
    with pytest.raises(DataError, match=rf"{label.name}.*affine"):
        load_case(cases[0], ({"scheme": "zscore"},) * 2, 2)
    bad = good.copy()
    bad[0, 0, 0] = 7
    rewrite(label, bad, case_affine())
    ds = read_dataset_json(root)
    with pytest.raises(DataError, match=rf"{label.name}.*value 7 at 1 pixel"):
        load_case(cases[0], ({"scheme": "zscore"},) * 2, 2, ds.classes)


def test_4d_truncated_and_missing_channel_files_are_errors(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path / "bad")
    _, cases = list_cases(root)
    img = cases[1].images[1]
    rewrite(img, np.zeros((*SHAPE, 3), np.float32), case_affine())
    with pytest.raises(DataError, match=rf"{img.name}: a 4-D file"):
        read_info(img)
    trunc = cases[2].images[0]
    data = trunc.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{trunc.name}: cannot read.*truncated"):
        read_array(trunc)
    (root / "imagesTr" / "ellipsoid_tr003_0001.nii.gz").unlink()
    with pytest.raises(DataError, match="case ellipsoid_tr003 has no channel 0001"):
        group_cases(root / "imagesTr", 2, ".nii.gz")


def test_region_based_labels_are_refused_naming_the_label(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path / "regions")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="label 'whole' is region-based"):
        read_dataset_json(root)


def test_a_bad_case_at_predict_writes_nothing_of_it(dataset, tmp_path):
    from segdiff.predict.volume import predict_volumes

    ts = tmp_path / "ts"
    ts.mkdir()
    for p in sorted((dataset / "imagesTs").iterdir()):
        (ts / p.name).write_bytes(p.read_bytes())
    bad = ts / "ellipsoid_ts001_0000.nii.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(bad.read_bytes())[:400]))  # header kept, voxels cut
    with pytest.raises(DataError, match="ellipsoid_ts001_0000.nii.gz"):
        predict_volumes(untrained(dataset), ts, tmp_path / "pred", progress=False, generations=1, steps=1)
    left = sorted(p.relative_to(tmp_path / "pred").as_posix() for p in (tmp_path / "pred").rglob("*ts001*"))
    assert left == []
    assert (tmp_path / "pred" / "ellipsoid_ts000.nii.gz").is_file()  # the case before it is complete


# -- end to end ------------------------------------------------------------------------------------
def test_cli_train_predict_evaluate_end_to_end(dataset, tmp_path, capsys):
    from segdiff.cli import main

    run, pred = tmp_path / "run", tmp_path / "pred"
    sets = ["data.size=16", "train.batch_size=4", "train.val_every=0", "train.save_every=0", "train.warmup_steps=0"]
    assert (
        main(
            [
                "train",
                "--data",
                str(dataset),
                "--out",
                str(run),
                "--preset",
                "tiny",
                "--max-steps",
                "2",
                "--quiet",
                "--set",
                *sets,
            ]
        )
        == 0
    )
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["volume"]["slice_axis"] == 2 and cfg["model"]["image_channels"] == 2
    resume = ["train", "--data", str(dataset), "--out", str(run), "--resume", "--max-steps", "3", "--quiet"]
    assert main([*resume, "--set", "data.volume.cache_cases=2"]) == 0  # the saved slicing and normalisation kept
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 3
    assert set(json.loads((run / "split.json").read_text())["val"]) == {"ellipsoid_tr002"}  # one case of 5
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run),
                "--input",
                str(dataset / "imagesTs"),
                "--out",
                str(pred),
                "--generations",
                "1",
                "--steps",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["evaluate", "--pred", str(pred), "--gt", str(dataset / "labelsTs")]) == 0
    out = capsys.readouterr().out
    assert "foreground mean" in out and "HD95" in out
    assert json.loads((pred / "summary.json").read_text())["cases"] == 2


def test_missing_readers_say_what_to_install(tmp_path, monkeypatch):
    import sys

    from segdiff.errors import UserError

    path = tmp_path / "a_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(path))
    monkeypatch.setitem(sys.modules, "nibabel", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install segdiff\[medical\]"):
        read_info(path)
    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    (tmp_path / "b.nrrd").write_bytes(b"NRRD0004\n")
    with pytest.raises(UserError, match=r"b.nrrd: reading .nrrd files needs SimpleITK"):
        read_info(tmp_path / "b.nrrd")


def test_volume_settings_are_checked():
    from segdiff.config import ConfigError, apply_overrides

    cfg = preset("tiny")
    with pytest.raises(ConfigError, match="data.volume.slice_axis = 3: must be 0, 1, 2"):
        apply_overrides(cfg, {"data.volume.slice_axis": "3"}, text=True).validate()
    with pytest.raises(ConfigError, match="data.volume.normalization"):
        apply_overrides(cfg, {"data.volume.normalization": "minmax"}, text=True).validate()
    ok = apply_overrides(cfg, {"data.volume.foreground_fraction": "0.33"}, text=True).validate()
    assert ok.data.volume.foreground_fraction == 0.33 and cfg.data.volume.foreground_fraction == 0.5


def test_the_2d_form_of_the_layout_trains_on_single_slices(tmp_path):
    from PIL import Image

    root = tmp_path / "Dataset002_Flat"
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    g = np.random.default_rng(0)
    for i in range(3):
        label = np.zeros((16, 16), np.uint8)
        label[4:10, 3 + i : 12] = 1
        Image.fromarray((label * 120 + g.integers(0, 60, (16, 16))).astype(np.uint8)).save(
            root / "imagesTr" / f"c{i}_0000.png"
        )
        Image.fromarray(label).save(root / "labelsTr" / f"c{i}.png")
    meta = {"channel_names": {"0": "grey"}, "labels": {"background": 0, "cell": 1}, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta))
    splits, cfg, batches, val = volume_training(root, small_config(), resume=False)
    assert cfg.data.volume.slice_axis == 2 and len(batches) == 2 and len(splits.val) == 1
    assert batches.batch(0, 2)[0].shape == (2, 1, 16, 16) and val[0][1].shape == (1, 16, 16)


def test_nrrd_and_mha_through_simpleitk_share_nibabels_geometry(dataset, tmp_path):
    sitk = pytest.importorskip("SimpleITK")  # optional: .nrrd / .mha are read only where it is installed
    src = dataset / "imagesTr" / "ellipsoid_tr000_0000.nii.gz"
    ref = read_info(src)
    for ending in (".nrrd", ".mha"):
        path = tmp_path / f"x_0000{ending}"
        sitk.WriteImage(sitk.ReadImage(str(src)), str(path))  # SimpleITK's own NIfTI -> LPS conversion
        info = read_info(path)
        assert info.shape == ref.shape and ref.same_grid(info) is None  # the same RAS affine, (i, j, k) order
        assert np.array_equal(read_array(path), read_array(src))
        write_like(tmp_path / f"y{ending}", read_array(src) * 2, path)
        assert np.array_equal(read_array(tmp_path / f"y{ending}"), read_array(src) * 2)
        assert info.same_grid(read_info(tmp_path / f"y{ending}")) is None


def test_a_damaged_training_file_stops_training_before_its_first_step(dataset, tmp_path):
    from segdiff.train.loop import train

    root = copy_dataset(dataset, tmp_path / "bad")
    bad = root / "imagesTr" / "ellipsoid_tr004_0001.nii.gz"
    bad.write_bytes(bad.read_bytes()[:-200])  # the gzip stream cut short
    with pytest.raises(DataError, match="ellipsoid_tr004_0001.nii.gz: cannot read the volume's voxels"):
        train(root, tmp_path / "run", small_config(), progress=False)
    assert not (tmp_path / "run" / "config.json").exists()  # stopped while setting up, nothing written


def test_memory_holds_at_most_cache_cases_cases(dataset):
    ds, cases = list_cases(dataset)
    base = with_volume_shape(small_config(), ds, cases, 0)
    b = VolumeBatches(cases, replace(base.data, volume=replace(base.data.volume, cache_cases=2)), 100, seed=0)
    assert len(b.cache.held) == 2
    seen = set()
    for step in range(6):
        b.batch(step, 4)
        assert len(b.cache.held) <= 2
        seen |= set(b.cache.held)
    assert len(seen) > 2  # cases come and go
