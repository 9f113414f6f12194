"""Fuzzed inputs (hypothesis) for every reader: image and mask files, folder pairing, config.json.

Each input is either read as documented (a float32 [H, W, 3] image in [0, 1], a bool [H, W] mask, a
list of pairs, a RunConfig) or refused with a DataError / UserError that names the file: never
another exception, a hang or a silent skip. Example counts are small so that the suite stays fast.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import make_dataset, tiny_config
from segdiff.config import RunConfig, preset
from segdiff.data.dataset import load_pair
from segdiff.data.folder import Sample, pair_split
from segdiff.data.io import max_pixels, read_image, read_mask
from segdiff.errors import DataError, UserError

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_n = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _file(work: Path, ext: str, data: bytes) -> Path:
    path = work / f"f{next(_n)}{ext}"
    path.write_bytes(data)
    return path


def _check_image(path: Path) -> None:
    """read_image either succeeds as documented or raises a DataError naming the file."""
    try:
        arr = read_image(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[-1] == 3 and min(arr.shape[:2]) >= 1
    assert np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1


def _check_mask(path: Path) -> None:
    try:
        m = read_mask(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert m.dtype == np.bool_ and m.ndim == 2 and min(m.shape) >= 1


def _encode(arr: np.ndarray, ext: str) -> bytes:
    if ext in (".tif", ".tiff"):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, photometric="rgb" if arr.ndim == 3 else "minisblack")
        return buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format={".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF"}[ext])
    return buf.getvalue()


EXTS = [".png", ".jpg", ".jpeg", ".tif", ".tiff"]
sizes = st.tuples(st.integers(1, 9), st.integers(1, 9))


@st.composite
def images(draw):
    """A valid image: uint8 gray/RGB/RGBA (any format) or uint16 / int16 / float32 (TIFF, floats with
    NaN, Inf and out-of-range values)."""
    h, w = draw(sizes)
    ext = draw(st.sampled_from(EXTS))
    channels = draw(st.sampled_from([None, 3, 4] if ext in (".png", ".tif", ".tiff") else [None, 3]))
    shape = (h, w) if channels is None else (h, w, channels)
    dtype = np.uint8
    if ext in (".tif", ".tiff"):
        dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int16, np.float32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.float32:
        arr = rng.uniform(-0.5, 1.5, shape).astype(np.float32)
        if draw(st.booleans()):
            arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    return ext, arr


@FUZZ
@given(ext=st.sampled_from([*EXTS, ".gif", ".bmp"]), data=st.binary(max_size=300))
def test_random_bytes(work, ext, data):
    path = _file(work, ext, data)
    _check_image(path)
    _check_mask(path)


@FUZZ
@given(img=images(), cut=st.floats(0, 1, exclude_max=True), flip=st.integers(0, 2**16))
def test_valid_truncated_and_flipped_images(work, img, cut, flip):
    ext, arr = img
    data = _encode(arr, ext)
    path = _file(work, ext, data)
    used = arr[..., :3] if arr.ndim == 3 and arr.shape[-1] == 4 else arr  # the alpha channel is dropped unread
    if arr.dtype == np.float32 and not np.isfinite(used).all():
        with pytest.raises(DataError, match=rf"{path.name}: image has \d+ NaN and \d+ infinite"):
            read_image(path)
    else:
        out = read_image(path)
        assert out.shape == (*arr.shape[:2], 3) and out.min() >= 0 and out.max() <= 1
        if arr.dtype == np.uint16 and arr.ndim == 2:  # 16-bit: scaled by 65535, not clipped at 255
            np.testing.assert_allclose(out[..., 0], arr / 65535, atol=1e-6)
    _check_image(_file(work, ext, data[: int(cut * len(data))]))  # truncated
    b = bytearray(data)
    b[flip % len(b)] ^= 0xFF
    _check_image(_file(work, ext, bytes(b)))  # one byte damaged


@FUZZ
@given(
    shape=sizes,
    values=st.lists(st.integers(0, 255), min_size=1, max_size=4),
    ext=st.sampled_from([".png", ".tif", ".gif"]),
)
def test_masks_of_any_values(work, shape, values, ext):
    rng = np.random.default_rng(len(values))
    arr = np.asarray(values, np.uint8)[rng.integers(0, len(values), shape)]
    path = _file(work, ext, _encode(arr, ext))
    n = len(np.unique(arr))
    if n > 2:
        with pytest.raises(DataError, match=rf"{path.name}: mask is not binary \({n} distinct values"):
            read_mask(path)
    else:
        m = read_mask(path)
        assert m.shape == shape and m.sum() == (arr == arr.max()).sum() * (n == 2 or arr.max() > 0)


def test_float_masks_with_nan_are_refused(work):
    arr = np.zeros((4, 4), np.float32)
    arr[1, 2] = np.nan
    path = _file(work, ".tif", _encode(arr, ".tif"))
    with pytest.raises(
        DataError, match=rf"{path.name}: mask has 1 NaN and 0 infinite value\(s\) \(first at pixel \(1, 2\)"
    ):
        read_mask(path)


@pytest.mark.filterwarnings("ignore:.*zero-size array:UserWarning")
def test_zero_size_and_one_pixel_images(work):
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0)  # a PNG header claiming width 0
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    for path in (_file(work, ".png", png), _file(work, ".tif", _encode(np.zeros((0, 4), np.uint8), ".tif"))):
        with pytest.raises(DataError, match=path.name):
            read_image(path)
    one = _file(work, ".png", _encode(np.full((1, 1, 3), 200, np.uint8), ".png"))
    assert read_image(one).shape == (1, 1, 3)
    # a 1 x 1 image goes through prediction in every mode
    from segdiff.api import SegDiff

    model = SegDiff(tiny_config(), "cpu")
    for mode in ("pad", "tile", "resize"):
        assert model.predict(read_image(one), mode=mode).mask.shape == (1, 1, 1)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_pixel_limit_refuses_decompression_bombs_before_decoding(work, monkeypatch):
    assert max_pixels() == 2**28
    # a 60000 x 60000 PNG (3.6 G pixels) in 60 bytes: refused from its header
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")
    path = _file(work, ".png", bomb)
    with pytest.raises(DataError, match=rf"{path.name}: image is 60000x60000 = 3,600,000,000 pixels, over the limit"):
        read_image(path)
    # the same for a TIFF whose header claims 60000 x 60000 (tags patched in a 4 x 4 file)
    tif = bytearray(_encode(np.zeros((4, 4), np.uint8), ".tif"))
    with tifffile.TiffFile(io.BytesIO(bytes(tif))) as t:
        tags = t.pages[0].tags
        for name in ("ImageWidth", "ImageLength"):
            tag = tags[name]
            tif[tag.valueoffset : tag.valueoffset + (2 if tag.dtype == 3 else 4)] = struct.pack(
                "<H" if tag.dtype == 3 else "<I", 60000
            )
    path = _file(work, ".tif", bytes(tif))
    with pytest.raises(DataError, match=rf"{path.name}: image is 60000x60000 .* over the limit"):
        read_image(path)
    # the limit is settable: SEGDIFF_MAX_PIXELS
    small = _file(work, ".png", _encode(np.zeros((10, 11), np.uint8), ".png"))
    monkeypatch.setenv("SEGDIFF_MAX_PIXELS", "100")
    with pytest.raises(DataError, match=r"11x10 = 110 pixels, over the limit of 100 .*SEGDIFF_MAX_PIXELS"):
        read_image(small)
    monkeypatch.setenv("SEGDIFF_MAX_PIXELS", "0")  # no limit
    assert read_image(small).shape == (10, 11, 3)


@FUZZ
@given(image=sizes, mask=sizes)
def test_image_and_mask_sizes_must_agree(work, image, mask):
    ip = _file(work, ".png", _encode(np.zeros((*image, 3), np.uint8), ".png"))
    mp = _file(work, ".png", _encode(np.zeros(mask, np.uint8), ".png"))
    if image == mask:
        im, m = load_pair(Sample("s", ip, mp))
        assert im.shape == (3, *image) and m.shape == (1, *mask)
    else:
        with pytest.raises(DataError, match=rf"{mp.name}: mask is \d+x\d+ but image {ip.name} is"):
            load_pair(Sample("s", ip, mp))


NAMES = st.sampled_from(["a", "b", "c", ".hidden", "Thumbs.db"])
ANY_EXT = st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".gif", ".txt", ".PNG", ""])


@FUZZ
@given(images=st.lists(st.tuples(NAMES, ANY_EXT), max_size=5), masks=st.lists(st.tuples(NAMES, ANY_EXT), max_size=5))
def test_folder_pairing(work, images, masks):
    split = work / f"split{next(_n)}"
    for sub, files in (("images", images), ("masks", masks)):
        (split / sub).mkdir(parents=True)
        for stem, ext in files:
            (split / sub / (stem if stem in (".hidden", "Thumbs.db") else stem + ext)).write_bytes(b"")
    try:
        pairs = pair_split(split)
    except DataError as exc:
        msg = str(exc)
        assert str(split) in msg  # names the file or the folder
        return
    # no error: every visible file has a supported extension and a partner, stems unique
    visible = {s for s, _ in images if s not in (".hidden", "Thumbs.db")}
    assert [p.stem for p in pairs] == sorted(visible)
    for stem, ext in images:
        if stem in visible:
            assert ext.lower() in (".png", ".jpg", ".tif")


def test_non_utf8_file_names_are_read_predicted_and_written(tmp_path):
    from segdiff.api import SegDiff
    from segdiff.predict.run import predict_folder

    root = make_dataset(tmp_path / "d", splits=(("test", 2),))
    raw = b"im\xff\xfeg"  # not UTF-8
    for sub in ("images", "masks"):
        d = os.fsencode(root / "test" / sub)
        os.rename(os.path.join(d, b"img01.png"), os.path.join(d, raw + b".png"))
    pairs = pair_split(root / "test")
    assert sorted(os.fsencode(p.stem) for p in pairs) == sorted([b"img00", raw])
    load_pair(pairs[1])
    predict_folder(SegDiff(tiny_config(), "cpu"), root / "test" / "images", tmp_path / "p", progress=False)
    assert os.path.exists(os.path.join(os.fsencode(tmp_path / "p" / "masks"), raw + b".png"))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)


def _paths(d: dict, prefix=()):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))
        else:
            yield (*prefix, k)


@FUZZ
@given(data=st.data(), value=JSON, raw=st.binary(max_size=40))
def test_config_loading(work, data, value, raw):
    d = preset("tiny").to_dict()
    keys = sorted(_paths(d))
    where = data.draw(st.sampled_from(keys))
    node = d
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value  # one setting replaced by any JSON value
    for content in (json.dumps(d).encode(), json.dumps(value).encode(), raw):
        path = _file(work, ".json", content)
        try:
            cfg = RunConfig.load(path)
        except UserError as exc:  # CheckpointError (unreadable) or the config layer's error (a bad value)
            assert str(path) in str(exc)
            continue
        assert isinstance(cfg, RunConfig)


def test_nonfinite_image_array_is_refused_by_the_api():
    from segdiff.api import SegDiff

    image = torch.rand(3, 8, 8)
    image[0, 1, 1] = float("nan")
    with pytest.raises(UserError, match="NaN or infinite"):
        SegDiff(tiny_config(), "cpu").predict(image)
