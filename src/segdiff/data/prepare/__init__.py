"""Turn the official releases of the paper's benchmarks into the data-folder convention.

    ROOT/{train,test}/{images,masks}/<stem>.png   (masks single-channel 8-bit, 0/255)
    ROOT/prepare.json                             (source, parameters, counts; written last)

`prepare_monuseg`, `prepare_vaihingen` and `prepare_cityscapes` read the files as the challenge
organisers distribute them; docs/data.md describes each source layout and the choices made.

Every file is written under a hidden temporary name and renamed into place, so an interrupted run
never leaves a truncated file under its final name (and `folder.list_files` skips the hidden
leftovers). prepare.json is written last: a ROOT without it was interrupted.

The shared helpers below come before the imports of the preparers, which use them.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from ...atomic import atomic_write, atomic_write_text
from ...errors import DataError, UserError
from ...version import __version__
from ..io import write_mask, write_png

PREPARE_JSON = "prepare.json"


def prepare_output_dir(out: Path, src: Path, owned: Iterable[str], overwrite: bool) -> Path:
    """Check and create the output folder.

    A non-empty `out` is refused unless `overwrite`; with `overwrite`, only the entries this
    preparer writes (`owned`, names relative to `out`) are removed, never other files.
    """
    out, src = Path(out), Path(src)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: the output path is a file; pass a folder for --out")
    out_r, src_r = out.resolve(), src.resolve()
    if out_r == src_r or out_r in src_r.parents:
        raise UserError(f"{out}: the output folder contains the source folder {src}; choose an --out outside it")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"{out}: the output folder is not empty; choose an empty or new folder, or pass "
                "--overwrite (overwrite=True) to replace the files a previous run prepared there"
            )
        for name in owned:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_image(path: Path, rgb_u8: np.ndarray, jpeg_quality: int | None = None) -> None:
    """Write a uint8 [H, W, 3] image atomically: PNG, or JPEG when `path` ends in .jpg."""
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        q = 90 if jpeg_quality is None else jpeg_quality
        atomic_write(path, lambda p: Image.fromarray(rgb_u8).save(p, quality=q))
    else:
        atomic_write(path, lambda p: write_png(p, rgb_u8))


def save_mask(path: Path, mask: np.ndarray) -> None:
    """Write a bool [H, W] mask atomically as a single-channel 8-bit PNG holding 0 and 255."""
    atomic_write(path, lambda p: write_mask(p, mask))


def save_json(path: Path, obj: dict) -> None:
    """Write `obj` atomically as indented JSON (UTF-8)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a header and rows atomically as CSV (UTF-8)."""

    def _write(p: Path) -> None:
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    atomic_write(path, _write)


def resize_rgb(rgb_u8: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize uint8 [H, W, 3] to `size` = (width, height) with a PIL filter; no-op when equal."""
    h, w = rgb_u8.shape[:2]
    if (w, h) == tuple(size):
        return rgb_u8
    return np.asarray(Image.fromarray(rgb_u8).resize(tuple(size), resample))


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize bool [H, W] to `size` = (width, height), nearest neighbour; no-op when equal."""
    h, w = mask.shape
    if (w, h) == tuple(size):
        return mask
    im = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    return np.asarray(im.resize(tuple(size), Image.NEAREST)) >= 128


def record(dataset: str, src: Path, out: Path, parameters: dict, counts: dict, **extra) -> dict:
    """The content of prepare.json: what was read, with which options, and how much was written."""
    return {
        "dataset": dataset,
        "source": str(Path(src).resolve()),
        "output": str(Path(out).resolve()),
        "parameters": parameters,
        "counts": counts,
        **extra,
        "segdiff_version": __version__,
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def require_dir(path: Path, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found; {hint}")
    return path


from .cityscapes import CITYSCAPES_CLASSES, prepare_cityscapes  # noqa: E402
from .monuseg import prepare_monuseg  # noqa: E402
from .vaihingen import prepare_vaihingen  # noqa: E402

__all__ = [
    "CITYSCAPES_CLASSES",
    "prepare_cityscapes",
    "prepare_monuseg",
    "prepare_vaihingen",
]
