"""Vaihingen single-building benchmark (the `buildings` folder of DSAC, DARNet, TDAC and SegDiff).

Source: one folder holding `building_<n>.tif` (the image, centred on one building) and
`building_mask_<n>.tif` (that building's mask, any two values such as 0/1 or 0/255).
`building_mask_all_<n>.tif` (every building of the tile) and other files are ignored.
Split: sorted by the integer n, the first `n_train` (100) are train, the rest (68) test.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from ...errors import DataError, UserError
from ..io import read_image, read_mask, to_u8
from . import (
    PREPARE_JSON,
    prepare_output_dir,
    record,
    resize_mask_nearest,
    resize_rgb,
    save_image,
    save_json,
    save_mask,
)

IMAGE_RE = re.compile(r"^building_(\d+)\.tiff?$", re.IGNORECASE)
MASK_RE = re.compile(r"^building_mask_(\d+)\.tiff?$", re.IGNORECASE)


def _index(folder: Path, pattern: re.Pattern, what: str) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if m and p.is_file():
            n = int(m.group(1))
            if n in found:
                raise DataError(f"{p}: same building number {n} as {found[n].name}; keep one of the {what}s")
            found[n] = p
    return found


def find_vaihingen(src: Path, n_train: int = 100) -> list[tuple[str, int, Path, Path]]:
    """(split, n, image, mask) for every building of `src`, sorted by n; first `n_train` are train."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(
            f"{src}: source folder not found; pass the folder holding building_<n>.tif and building_mask_<n>.tif"
        )
    images, masks = _index(src, IMAGE_RE, "image"), _index(src, MASK_RE, "mask")
    for n, p in images.items():
        if n not in masks:
            raise DataError(f"{p}: no mask building_mask_{n}.tif beside it; add it or remove the image")
    for n, p in masks.items():
        if n not in images:
            raise DataError(f"{p}: no image building_{n}.tif beside it; add it or remove the mask")
    if len(images) < n_train + 1:
        raise DataError(
            f"{src}: found {len(images)} buildings (building_<n>.tif with building_mask_<n>.tif), need at "
            f"least {n_train + 1} for {n_train} train and a test set; point --src at the full "
            "buildings folder"
        )
    order = sorted(images)
    return [("train" if i < n_train else "test", n, images[n], masks[n]) for i, n in enumerate(order)]


def prepare_vaihingen(src: Path, out: Path, size: int = 256, overwrite: bool = False, n_train: int = 100) -> dict:
    """Write OUT/{train,test}/{images,masks}/building_<n>.png at size x size and OUT/prepare.json.

    Images are resized bilinearly (PIL, antialiased when shrinking), masks by nearest neighbour,
    only when not already size x size. Returns the content of prepare.json.
    """
    if int(size) != size or size < 1:
        raise UserError(f"--size {size}: must be a positive integer (the paper uses 256)")
    if int(n_train) != n_train or n_train < 1:
        raise UserError(f"n_train={n_train}: must be a positive integer (the benchmark uses 100)")
    size, n_train = int(size), int(n_train)
    src, out = Path(src), Path(out)
    items = find_vaihingen(src, n_train)
    prepare_output_dir(out, src, ("train", "test", PREPARE_JSON), overwrite)

    counts = {"train": 0, "test": 0}
    native_sizes: set[tuple[int, int]] = set()
    for split, n, img_path, mask_path in items:
        rgb = to_u8(read_image(img_path))
        mask = read_mask(mask_path)
        if mask.shape != rgb.shape[:2]:
            raise DataError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but {img_path.name} is "
                f"{rgb.shape[1]}x{rgb.shape[0]}; image and mask must have the same size"
            )
        native_sizes.add((rgb.shape[1], rgb.shape[0]))
        stem = f"building_{n}"
        save_image(out / split / "images" / f"{stem}.png", resize_rgb(rgb, (size, size), Image.BILINEAR))
        save_mask(out / split / "masks" / f"{stem}.png", resize_mask_nearest(mask, (size, size)))
        counts[split] += 1
    info = record(
        "vaihingen",
        src,
        out,
        {
            "size": size,
            "n_train": n_train,
            "split": "sorted by integer n; first n_train train, the rest test",
            "image_resize": "PIL bilinear",
            "mask_resize": "nearest",
            "image_format": "png",
        },
        counts,
        native_sizes=[f"{w}x{h}" for w, h in sorted(native_sizes)],
        train_first_last=[items[0][1], items[n_train - 1][1]],
        test_first_last=[items[n_train][1], items[-1][1]],
    )
    save_json(out / PREPARE_JSON, info)
    return info
