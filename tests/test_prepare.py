"""Preparers on tiny fixtures written in each benchmark's official source format."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from segdiff.data.folder import pair_split
from segdiff.data.io import read_mask
from segdiff.data.prepare import prepare_cityscapes, prepare_monuseg, prepare_vaihingen
from segdiff.data.prepare.cityscapes import expand_box, read_instance_ids
from segdiff.data.prepare.cli import add_parser
from segdiff.data.prepare.monuseg import read_aperio_polygons, resize_mask_box
from segdiff.errors import DataError, UserError

# ----------------------------------------------------------------------------- helpers


def _u8(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def _no_partials(root):
    assert not [p for p in root.rglob("*") if p.name.startswith(".")], "temporary files left behind"


# ----------------------------------------------------------------------------- MoNuSeg

SQUARE = [(10, 10), (20, 10), (20, 20), (10, 20)]


def _aperio_xml(polygons):
    regions = []
    for i, pts in enumerate(polygons, 1):
        verts = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in pts)
        regions.append(f'<Region Id="{i}" Type="0"><Attributes/><Vertices>{verts}</Vertices></Region>')
    return (
        '<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Attributes/><Regions>'
        '<RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/></RegionAttributeHeaders>'
        + "".join(regions)
        + "</Regions></Annotation></Annotations>"
    )


def _monuseg_src(root, train=("a", "b"), test=("c",)):
    rng = np.random.default_rng(0)
    tis, ann, tst = (
        root / "MoNuSegTrainingData" / "Tissue_Images",
        root / "MoNuSegTrainingData" / "Annotations",
        root / "MoNuSegTestData",
    )
    for d in (tis, ann, tst):
        d.mkdir(parents=True)
    polys = [SQUARE, [(30.5, 30.5), (35.2, 30.5), (33.0, 36.0)], [(1, 1), (5, 5)]]  # last: 2 vertices
    for folder_img, folder_xml, stems in ((tis, ann, train), (tst, tst, test)):
        for s in stems:
            tifffile.imwrite(folder_img / f"{s}.tif", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
            (folder_xml / f"{s}.xml").write_text(_aperio_xml(polys))
    return root


def test_monuseg_native_size_rasterises_square_exactly(tmp_path):
    src = _monuseg_src(tmp_path / "src")
    info = prepare_monuseg(src, tmp_path / "out", size=40)
    out = tmp_path / "out"
    assert info["counts"] == {"train": 2, "test": 1}
    assert info["skipped_regions_lt3_vertices"] == 3 and info["polygons"] == 6
    assert json.loads((out / "prepare.json").read_text())["counts"] == {"train": 2, "test": 1}
    mode, m = _u8(out / "train" / "masks" / "a.png")
    assert mode == "L" and m.shape == (40, 40) and set(np.unique(m)) == {0, 255}
    square = np.zeros((40, 40), bool)
    square[10:21, 10:21] = True  # filled, boundary included: 11 x 11 pixels
    assert ((m > 0) & ~square)[:25, :25].sum() == 0 and (m > 0)[square].all()
    # images are lossless at native size
    _, img = _u8(out / "test" / "images" / "c.png")
    assert np.array_equal(img, tifffile.imread(src / "MoNuSegTestData" / "c.tif"))
    assert [s.stem for s in pair_split(out / "train")] == ["a", "b"]
    assert read_mask(out / "test" / "masks" / "c.png").dtype == bool
    _no_partials(out)


def test_monuseg_resize_box_average_threshold(tmp_path):
    src = _monuseg_src(tmp_path / "src", train=("a",), test=("c",))
    prepare_monuseg(src, tmp_path / "out", size=20)
    _, m = _u8(tmp_path / "out" / "train" / "masks" / "a.png")
    _, img = _u8(tmp_path / "out" / "train" / "images" / "a.png")
    assert m.shape == (20, 20) and img.shape == (20, 20, 3)
    # square covers rows/cols 10..20: blocks 5..9 full, block 10 half (0.5 -> fg), corner (10,10) 1/4 -> bg
    expect = np.zeros((20, 20), bool)
    expect[5:11, 5:11] = True
    expect[10, 10] = False
    assert np.array_equal(m[:13, :13] > 0, expect[:13, :13])


def test_resize_mask_box_exact_halves():
    m = np.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 1, 1]], bool)
    assert resize_mask_box(m, (2, 2)).tolist() == [[True, False], [True, True]]


def test_monuseg_train_only_and_test_only(tmp_path):
    src = _monuseg_src(tmp_path / "src")
    info = prepare_monuseg(src / "MoNuSegTrainingData", tmp_path / "o1", size=16)
    assert info["counts"] == {"train": 2, "test": 0}
    info = prepare_monuseg(src / "MoNuSegTestData", tmp_path / "o2", size=16)
    assert info["counts"] == {"train": 0, "test": 1}


def test_monuseg_errors_name_the_file(tmp_path):
    src = _monuseg_src(tmp_path / "src")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        prepare_monuseg(tmp_path / "empty", tmp_path / "o")
    (src / "MoNuSegTestData" / "c.xml").unlink()
    with pytest.raises(DataError, match=r"c\.tif"):
        prepare_monuseg(src, tmp_path / "o")
    (src / "MoNuSegTestData" / "c.xml").write_text("<Annotations><Annotation>")
    with pytest.raises(DataError, match=r"c\.xml.*malformed"):
        prepare_monuseg(src, tmp_path / "o")
    assert not (tmp_path / "o").exists()  # validation happens before anything is written
    train = src / "MoNuSegTrainingData"
    for p in (train / "Annotations").iterdir():
        p.unlink()
    (train / "Annotations").rmdir()
    with pytest.raises(DataError, match="Annotations"):
        prepare_monuseg(train, tmp_path / "o")


def test_aperio_parser_skips_short_regions(tmp_path):
    p = tmp_path / "x.xml"
    p.write_text(_aperio_xml([SQUARE, [(1, 1)], [(2.5, 3.5), (4, 4), (5, 2)]]))
    polys, skipped = read_aperio_polygons(p)
    assert skipped == 1 and len(polys) == 2 and polys[1][0] == (2.5, 3.5)


def test_output_folder_refused_unless_overwrite(tmp_path):
    src = _monuseg_src(tmp_path / "src", train=("a",), test=())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(UserError, match="overwrite"):
        prepare_monuseg(src, out, size=8)
    prepare_monuseg(src, out, size=8, overwrite=True)
    (out / "train" / "images" / "stale.png").write_bytes(b"")
    prepare_monuseg(src, out, size=8, overwrite=True)
    assert not (out / "train" / "images" / "stale.png").exists() and (out / "keep.txt").exists()
    with pytest.raises(UserError, match="contains the source"):
        prepare_monuseg(src, tmp_path, size=8, overwrite=True)


# ----------------------------------------------------------------------------- Vaihingen


def _vaihingen_src(root, n=12, side=16):
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(1, n + 1):
        tifffile.imwrite(root / f"building_{i}.tif", rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        mask = np.zeros((side, side), np.uint8)
        mask[4:12, 2 : 2 + i % 10 + 2] = 1  # 0/1 mask
        tifffile.imwrite(root / f"building_mask_{i}.tif", mask)
        tifffile.imwrite(root / f"building_mask_all_{i}.tif", np.ones((side, side), np.uint8))
    return root


def test_vaihingen_numeric_split_and_resize(tmp_path):
    src = _vaihingen_src(tmp_path / "buildings")
    info = prepare_vaihingen(src, tmp_path / "out", size=8, n_train=10)
    out = tmp_path / "out"
    assert info["counts"] == {"train": 10, "test": 2}
    train = [s.stem for s in pair_split(out / "train")]
    test = [s.stem for s in pair_split(out / "test")]
    assert "building_9" in train and "building_10" in train  # numeric, not lexicographic, order
    assert sorted(test) == ["building_11", "building_12"]
    mode, m = _u8(out / "train" / "masks" / "building_3.png")
    assert mode == "L" and m.shape == (8, 8) and set(np.unique(m)) == {0, 255}
    assert _u8(out / "test" / "images" / "building_12.png")[1].shape == (8, 8, 3)
    expect = np.zeros((16, 16), bool)
    expect[4:12, 2:7] = True  # building_3: columns 2..6
    assert np.array_equal(m > 0, expect[1::2, 1::2])  # nearest neighbour picks odd rows/cols
    _no_partials(out)


def test_vaihingen_errors(tmp_path):
    src = _vaihingen_src(tmp_path / "b", n=5)
    with pytest.raises(DataError, match=r"b: found 5 buildings"):
        prepare_vaihingen(src, tmp_path / "o", n_train=5)
    (src / "building_mask_2.tif").unlink()
    with pytest.raises(DataError, match=r"building_2\.tif"):
        prepare_vaihingen(src, tmp_path / "o", n_train=2)
    with pytest.raises(DataError, match="nowhere"):
        prepare_vaihingen(tmp_path / "nowhere", tmp_path / "o")


# ----------------------------------------------------------------------------- Cityscapes

H, W = 48, 64


def _instance_ids(shift=0):
    ids = np.full((H, W), 7, np.uint16)  # 7: road (stuff)
    ids[10:20, 20 + shift : 40 + shift] = 26001  # car, 10 x 20 = 200 px
    ids[12:16, 40 + shift : 46 + shift] = 26002  # car, 24 px: below min_area
    ids[30:45, 5:15] = 24001  # person, 150 px
    ids[40:44, 50:60] = 26  # car crowd region without instance ids: ignored
    return ids


def _cityscapes_src(root):
    rng = np.random.default_rng(2)
    for split, city, shift in (("train", "aachen", 0), ("val", "frankfurt", 3)):
        prefix = f"{city}_000000_000019"
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(img_dir / f"{prefix}_leftImg8bit.png")
        Image.fromarray(_instance_ids(shift)).save(gt_dir / f"{prefix}_gtFine_instanceIds.png")
    return root


def _boxes(path):
    with open(path, newline="") as f:
        return {r["stem"]: r for r in csv.DictReader(f)}


def test_cityscapes_tight(tmp_path):
    src = _cityscapes_src(tmp_path / "cs")
    assert read_instance_ids(next((src / "gtFine").rglob("*.png"))).max() == 26002
    info = prepare_cityscapes(src, tmp_path / "out", protocol="tight", min_area=100, input_size=32)
    out = tmp_path / "out"
    assert info["counts"]["car"] == {"train": 1, "test": 1}
    assert info["counts"]["person"] == {"train": 1, "test": 1}
    assert info["counts"]["bus"] == {"train": 0, "test": 0}
    assert info["skipped_small_instances"]["car"] == 2
    stem = "aachen_000000_000019_26001"
    _, img = _u8(out / "car" / "train" / "images" / f"{stem}.png")
    _, m_train = _u8(out / "car" / "train" / "masks" / f"{stem}.png")
    _, m_native = _u8(out / "car" / "train" / "masks_native" / f"{stem}.png")
    assert img.shape == (32, 32, 3) and m_train.shape == (32, 32) and m_native.shape == (10, 20)
    assert (m_native == 255).all() and (m_train == 255).all()
    _, m_test = _u8(out / "car" / "test" / "masks" / "frankfurt_000000_000019_26001.png")
    assert m_test.shape == (10, 20)  # test masks at native crop size
    box = _boxes(out / "car" / "boxes.csv")[stem]
    assert [int(box[k]) for k in ("x0", "y0", "x1", "y1")] == [20, 10, 40, 20] and box["area"] == "200"
    assert box["source"] == "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert len(pair_split(out / "person" / "train")) == 1
    assert json.loads((out / "car" / "prepare.json").read_text())["class"] == "car"
    _no_partials(out)


def test_cityscapes_expansion_larger_and_seeded(tmp_path):
    src = _cityscapes_src(tmp_path / "cs")
    prepare_cityscapes(src, tmp_path / "tight", protocol="tight", classes=["car"], min_area=100, input_size=16)
    prepare_cityscapes(src, tmp_path / "exp", protocol="expansion", classes="car", min_area=10, input_size=16)
    tight, exp = (
        _boxes(tmp_path / "tight" / "car" / "boxes.csv"),
        _boxes(tmp_path / "exp" / "car" / "boxes.csv"),
    )
    assert not (tmp_path / "exp" / "person").exists()
    for stem, t in tight.items():
        e = exp[stem]
        tw, th = int(t["x1"]) - int(t["x0"]), int(t["y1"]) - int(t["y0"])
        ew, eh = int(e["x1"]) - int(e["x0"]), int(e["y1"]) - int(e["y0"])
        assert ew > tw and eh > th and int(e["x0"]) <= int(t["x0"]) and int(e["x1"]) >= int(t["x1"])
        f = float(e["expansion"])
        assert f == 1.15 if e["split"] == "test" else 1.10 <= f <= 1.20
        # only this instance is foreground, though the expanded crop reaches the neighbouring car
        split = "masks_native" if e["split"] == "train" else "masks"
        _, m = _u8(tmp_path / "exp" / "car" / e["split"] / split / f"{stem}.png")
        assert (m > 0).sum() == int(e["area"]) == 200 and m.shape == (eh, ew)
    again = prepare_cityscapes(
        src, tmp_path / "exp", protocol="expansion", classes="car", min_area=10, input_size=16, overwrite=True
    )
    assert again["counts"]["car"] == {"train": 2, "test": 2}
    assert _boxes(tmp_path / "exp" / "car" / "boxes.csv") == exp  # same seed, same boxes


def test_expand_box_clips_and_contains():
    assert expand_box((0, 0, 10, 10), 1.0, 64, 48) == (0, 0, 10, 10)
    assert expand_box((10, 10, 30, 30), 1.15, 64, 48) == (8, 8, 32, 32)  # 20 -> 23, rounded outwards
    assert expand_box((0, 40, 64, 48), 1.2, 64, 48) == (0, 39, 64, 48)


def test_cityscapes_errors(tmp_path):
    src = _cityscapes_src(tmp_path / "cs")
    with pytest.raises(UserError, match="unknown class"):
        prepare_cityscapes(src, tmp_path / "o", classes="car,boat")
    gt = next((src / "gtFine" / "val").rglob("*.png"))
    gt.unlink()
    with pytest.raises(DataError, match="gtFine_instanceIds"):
        prepare_cityscapes(src, tmp_path / "o")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="leftImg8bit"):
        prepare_cityscapes(tmp_path / "bare", tmp_path / "o")


# ----------------------------------------------------------------------------- CLI


def test_cli_prepare_vaihingen(tmp_path, capsys):
    src = _vaihingen_src(tmp_path / "buildings")
    parser = argparse.ArgumentParser(prog="segdiff")
    add_parser(parser.add_subparsers(dest="command"))
    argv = ["prepare", "vaihingen", "--src", str(src), "--out", str(tmp_path / "out"), "--size", "8"]
    args = parser.parse_args([*argv, "--n-train", "10"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("train: 10") and lines[1].startswith("test: 2")
    args = parser.parse_args([*argv, "--protocol", "expansion"])
    with pytest.raises(UserError, match="--protocol"):
        args.func(args)
