"""Multi-class masks: which classes a data set has, and mask files -> class labels.

The classes of a data root come from ROOT/classes.json when it exists, otherwise from a scan of the masks
of all its splits (train, val, test). Exactly two values and no classes.json is the paper's binary task
(`resolve_classes` returns None, and masks are read by `io.read_mask` as before). The classes themselves
(ClassSet, the classes.json format) are in segdiff/classset.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..classset import MAX_CLASSES, ClassSet, classes_from_values, load_classes_json
from ..errors import DataError
from .io import MASK_EXTS, check_pixels, open_pil, read_raw

SPLITS = ("train", "val", "test")


def read_mask_raw(path: Path | str) -> np.ndarray:
    """A mask file as stored: [H, W] integers (palette PNGs: the palette indices) or [H, W, C] colours."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".gif", ".bmp") and path.is_file():
        try:
            with open_pil(path) as im:
                if im.mode == "P":
                    check_pixels(path, im.size[1], im.size[0])
                    return np.asarray(im)
        except DataError:
            raise
        except Exception as exc:  # PIL raises many types for a corrupt file
            raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    return read_raw(path)


def read_labels(path: Path | str, classes: ClassSet) -> np.ndarray:
    """A mask file -> uint8 [H, W] class indices (IGNORE_INDEX for ignored pixels)."""
    return classes.labels(read_mask_raw(path), path)


def mask_files(root: Path) -> list[Path]:
    """Every mask file of ROOT/{train,val,test}/masks (sorted per split)."""
    files = []
    for split in SPLITS:
        d = Path(root) / split / "masks"
        if d.is_dir():
            files += [
                p for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in MASK_EXTS and p.name[0] != "."
            ]
    return files


def scan_values(files: list[Path]) -> list[int]:
    """The distinct mask values of single-channel (or grey RGB) masks; a colour-coded mask is an error."""
    values: set[int] = set()
    for p in files:
        raw = read_mask_raw(p)
        if raw.ndim == 3:
            if raw.shape[-1] in (2, 4):
                raw = raw[..., :-1]
            if not (raw == raw[..., :1]).all():
                raise DataError(
                    f"{p}: colour-coded mask (RGB with channels that differ); give each class's 'color' in a "
                    f"classes.json in the data root (docs/data.md)"
                )
            raw = raw[..., 0]
        u = np.unique(raw)
        if not np.issubdtype(u.dtype, np.integer) and u.dtype != np.bool_:
            if not np.array_equal(u, np.round(u)) or (u < 0).any():
                raise DataError(f"{p}: mask holds non-integer values; masks hold integer class values")
        values.update(int(v) for v in u)
        if len(values) > MAX_CLASSES:
            raise DataError(
                f"{p}: masks are not binary and hold more than {MAX_CLASSES} distinct values, too many classes; "
                "is this a mask folder?"
            )
    return sorted(values)


def resolve_classes(root: Path) -> ClassSet | None:
    """The classes of a data root: ROOT/classes.json, else a scan of every mask of every split; None for
    the binary task (no classes.json and at most two distinct mask values)."""
    root = Path(root)
    if (root / "classes.json").is_file():
        return load_classes_json(root / "classes.json")
    values = scan_values(mask_files(root))
    if len(values) <= 2:
        return None
    return classes_from_values(values)


def find_classes_json(*folders: Path) -> Path | None:
    """The first classes.json in the folders given or their parents (up to two levels up)."""
    for f in folders:
        if f is None:
            continue
        f = Path(f)
        for d in (f, f.parent, f.parent.parent):
            if (d / "classes.json").is_file():
                return d / "classes.json"
    return None
