"""Cityscapes per-object crops (the interactive-segmentation setting of Polygon-RNN++ and SegDiff).

Source: the official layout
    SRC/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    SRC/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
where a pixel of an instance holds class_id * 1000 + instance number (16-bit PNG); pixels below
1000 (stuff, or crowd groups without instances) are never objects.

Every instance of the eight classes with at least `min_area` pixels becomes one sample: its tight
box (protocol 'tight') or that box grown about its centre (protocol 'expansion': width and height
x1.15 on test, x(1.10..1.20) drawn per instance on train, keyed by (seed, stem)), clipped to the
image. Only that instance's pixels are foreground in the crop's mask.

Output, one data ROOT per class (Cityscapes train -> train, val -> test; the official test set has
no labels):
    OUT/<class>/train/images/<stem>.png        crop resized to input_size x input_size (bilinear)
    OUT/<class>/train/masks/<stem>.png         mask resized to input_size (nearest), for training
    OUT/<class>/train/masks_native/<stem>.png  mask at the native crop size
    OUT/<class>/test/images/<stem>.png         crop resized to input_size x input_size (bilinear)
    OUT/<class>/test/masks/<stem>.png          mask at the NATIVE crop size (metrics are computed
                                               there; predictions are resized to the mask's size)
    OUT/<class>/boxes.csv, OUT/<class>/prepare.json, OUT/prepare.json
with stems <city>_<seq>_<frame>_<instance id>.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError, UserError
from ..io import read_image, to_u8
from . import (
    PREPARE_JSON,
    prepare_output_dir,
    record,
    require_dir,
    resize_mask_nearest,
    resize_rgb,
    save_csv,
    save_image,
    save_json,
    save_mask,
)

CITYSCAPES_CLASSES: dict[str, int] = {
    "person": 24,
    "rider": 25,
    "car": 26,
    "truck": 27,
    "bus": 28,
    "train": 31,
    "motorcycle": 32,
    "bicycle": 33,
}
SPLITS = {"train": "train", "val": "test"}  # Cityscapes split -> our split
PROTOCOLS = ("tight", "expansion")
DEFAULT_MIN_AREA = 150
TEST_EXPANSION = 1.15
TRAIN_EXPANSION = (1.10, 1.20)
IMG_SUFFIX = "_leftImg8bit.png"
GT_SUFFIX = "_gtFine_instanceIds.png"
CSV_HEADER = (
    "split",
    "stem",
    "source",
    "x0",
    "y0",
    "x1",
    "y1",
    "tight_x0",
    "tight_y0",
    "tight_x1",
    "tight_y1",
    "area",
    "expansion",
)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1: columns x0..x1-1, rows y0..y1-1


def parse_classes(classes: Sequence[str] | str | None) -> list[str]:
    """Class names in the canonical order; None means all eight. Unknown names are a UserError."""
    if classes is None:
        return list(CITYSCAPES_CLASSES)
    if isinstance(classes, str):
        classes = classes.split(",")
    wanted = {c.strip().lower() for c in classes if c.strip()}
    unknown = sorted(wanted - set(CITYSCAPES_CLASSES))
    if unknown or not wanted:
        raise UserError(
            f"--classes {','.join(classes)}: unknown class {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(CITYSCAPES_CLASSES)}"
        )
    return [c for c in CITYSCAPES_CLASSES if c in wanted]


def find_cityscapes(src: Path) -> list[tuple[str, Path, Path]]:
    """(cityscapes_split, image, instanceIds) for every labelled image of train/ and val/."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found; pass the folder holding leftImg8bit/ and gtFine/")
    hint = f"unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into {src}"
    img_root = require_dir(src / "leftImg8bit", "Cityscapes image", hint)
    gt_root = require_dir(src / "gtFine", "Cityscapes annotation", hint)
    items = []
    for cs_split in SPLITS:
        split_dir = img_root / cs_split
        if not split_dir.is_dir():
            continue
        for city in sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for img in sorted(city.glob(f"*{IMG_SUFFIX}")):
                gt = gt_root / cs_split / city.name / (img.name[: -len(IMG_SUFFIX)] + GT_SUFFIX)
                if not gt.is_file():
                    raise DataError(f"{gt}: instance-id file for {img} not found; {hint}")
                items.append((cs_split, img, gt))
    if not items:
        raise DataError(f"{img_root}: no images in train/<city>/ or val/<city>/ named *{IMG_SUFFIX}; {hint}")
    return items


def read_instance_ids(path: Path) -> np.ndarray:
    """int32 [H, W] of a *_gtFine_instanceIds.png (16- or 32-bit grayscale PNG)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except Exception as exc:  # PIL raises many types for a corrupt file
        raise DataError(f"{path}: cannot read instance ids ({type(exc).__name__}: {exc})") from None
    if not mode.startswith("I") or arr.ndim != 2:
        raise DataError(
            f"{path}: expected a 16-bit single-channel instance-id PNG, got PIL mode {mode}; "
            f"use the *{GT_SUFFIX} files of gtFine"
        )
    return arr.astype(np.int32)


def find_instances(
    ids: np.ndarray, class_ids: Sequence[int], min_area: int
) -> tuple[list[tuple[int, int, Box]], list[int]]:
    """Instances of `class_ids`: ([(instance id, area, tight box)], [ids skipped for area < min_area])."""
    values = np.unique(ids)
    values = values[(values >= 1000) & np.isin(values // 1000, np.asarray(class_ids))]
    kept, small = [], []
    for v in values.tolist():
        ys, xs = np.nonzero(ids == v)
        if len(ys) < min_area:
            small.append(v)
            continue
        kept.append((v, len(ys), (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)))
    return kept, small


def expand_box(box: Box, factor: float, width: int, height: int) -> Box:
    """Grow `box` about its centre so its width and height are x`factor`, then clip to the image.

    Rounded outwards, so the result always contains `box` (factor 1 returns `box`).
    """
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    return (
        max(0, min(x0, math.floor(cx - hw))),
        max(0, min(y0, math.floor(cy - hh))),
        min(width, max(x1, math.ceil(cx + hw))),
        min(height, max(y1, math.ceil(cy + hh))),
    )


def expansion_factor(protocol: str, split: str, seed: int, stem: str) -> float:
    """1 (tight); 1.15 on test; on train uniform in [1.10, 1.20], keyed by (seed, stem)."""
    if protocol == "tight":
        return 1.0
    if split == "test":
        return TEST_EXPANSION
    rng = np.random.default_rng([seed, zlib.crc32(stem.encode())])
    return float(rng.uniform(*TRAIN_EXPANSION))


def prepare_cityscapes(
    src: Path,
    out: Path,
    protocol: str = "tight",
    classes: Sequence[str] | str | None = None,
    min_area: int = DEFAULT_MIN_AREA,
    input_size: int = 128,
    overwrite: bool = False,
    seed: int = 0,
) -> dict:
    """Write one data ROOT per class under OUT (see the module docstring) and OUT/prepare.json.

    Returns the content of OUT/prepare.json (counts per class and split, skipped small instances).
    """
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol {protocol}: choose 'tight' or 'expansion'")
    if int(min_area) != min_area or min_area < 1:
        raise UserError(f"--min-area {min_area}: must be a positive number of pixels (default 150)")
    if int(input_size) != input_size or input_size < 1:
        raise UserError(f"--size {input_size}: must be a positive integer (the paper uses 128)")
    min_area, input_size, seed = int(min_area), int(input_size), int(seed)
    names = parse_classes(classes)
    src, out = Path(src), Path(out)
    items = find_cityscapes(src)
    prepare_output_dir(out, src, [*names, PREPARE_JSON], overwrite)

    by_id = {CITYSCAPES_CLASSES[n]: n for n in names}
    counts = {n: {"train": 0, "test": 0} for n in names}
    small = {n: 0 for n in names}
    rows: dict[str, list[tuple]] = {n: [] for n in names}
    for cs_split, img_path, gt_path in items:
        split = SPLITS[cs_split]
        ids = read_instance_ids(gt_path)
        kept, skipped = find_instances(ids, list(by_id), min_area)
        for v in skipped:
            small[by_id[v // 1000]] += 1
        if not kept:
            continue
        crops = _write_crops(out, src, split, img_path, gt_path, ids, kept, by_id, protocol, seed, input_size)
        for name, row in crops:
            counts[name][split] += 1
            rows[name].append(row)

    parameters = _parameters(protocol, names, min_area, input_size, seed)
    for name in names:
        save_csv(out / name / "boxes.csv", CSV_HEADER, rows[name])
        info = record(
            "cityscapes",
            src,
            out / name,
            parameters,
            counts[name],
            **{"class": name, "class_id": CITYSCAPES_CLASSES[name]},
            skipped_small_instances=small[name],
        )
        save_json(out / name / PREPARE_JSON, info)
    info = record("cityscapes", src, out, parameters, counts, skipped_small_instances=small)
    save_json(out / PREPARE_JSON, info)
    return info


def _write_crops(
    out: Path,
    src: Path,
    split: str,
    img_path: Path,
    gt_path: Path,
    ids: np.ndarray,
    kept: list[tuple[int, int, Box]],
    by_id: dict[int, str],
    protocol: str,
    seed: int,
    input_size: int,
) -> list[tuple[str, tuple]]:
    """Write the image and mask crops of one frame's instances `kept` (as `find_instances` returns them)
    into OUT/<class>/<split>/; returns (class name, boxes.csv row) per crop."""
    rgb = to_u8(read_image(img_path))
    h, w = ids.shape
    if rgb.shape[:2] != (h, w):
        raise DataError(
            f"{gt_path}: instance ids are {w}x{h} but {img_path.name} is {rgb.shape[1]}x{rgb.shape[0]}; "
            "the two files must come from the same frame"
        )
    size = (input_size, input_size)
    prefix = img_path.name[: -len(IMG_SUFFIX)]
    written = []
    for v, area, tight in kept:
        name = by_id[v // 1000]
        stem = f"{prefix}_{v}"
        factor = expansion_factor(protocol, split, seed, stem)
        x0, y0, x1, y1 = expand_box(tight, factor, w, h)
        mask = ids[y0:y1, x0:x1] == v
        root = out / name / split
        save_image(root / "images" / f"{stem}.png", resize_rgb(rgb[y0:y1, x0:x1], size, Image.BILINEAR))
        if split == "train":
            save_mask(root / "masks" / f"{stem}.png", resize_mask_nearest(mask, size))
            save_mask(root / "masks_native" / f"{stem}.png", mask)
        else:
            save_mask(root / "masks" / f"{stem}.png", mask)
        source = img_path.relative_to(src).as_posix()
        written.append((name, (split, stem, source, x0, y0, x1, y1, *tight, area, round(factor, 4))))
    return written


def _parameters(protocol: str, names: list[str], min_area: int, input_size: int, seed: int) -> dict:
    """The parameters recorded in prepare.json."""
    return {
        "protocol": protocol,
        "classes": names,
        "min_area": min_area,
        "input_size": input_size,
        "seed": seed,
        "expansion": (
            "none (tight box)"
            if protocol == "tight"
            else f"test x{TEST_EXPANSION}; train x U{list(TRAIN_EXPANSION)} per instance, keyed by (seed, stem)"
        ),
        "split_map": SPLITS,
        "image_resize": "crop -> input_size x input_size, PIL bilinear",
        "mask_size": "train/masks: input_size (nearest); train/masks_native and test/masks: native crop",
        "image_format": "png",
    }
