"""Reading and writing images and masks, with errors that name the file.

Images: PNG, JPEG, TIFF; RGB, grayscale (replicated to 3 channels), RGBA (alpha dropped),
8- or 16-bit integers (scaled by the dtype's maximum) or floats (taken as [0, 1]).
Masks: binary with any two values; the larger value is foreground. A mask with one value is
empty if that value is 0, full otherwise. More than two values is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp", ".gif")


def _read_raw(path: Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = tifffile.imread(str(path))
        else:
            with Image.open(path) as im:
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("I;16", "I;16B", "I;16L"):
                    return np.asarray(im).astype(np.uint16)
                arr = np.asarray(im)
    except Exception as exc:  # PIL and tifffile raise many types for a corrupt file
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF [C, H, W] -> [H, W, C]
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise DataError(f"{path}: expected a 2-D image with optional channels, got shape {arr.shape}")
    return arr


def to_unit_float(arr: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """Scale integer images by their dtype's maximum and clip floats to [0, 1]."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)
    raise DataError(f"{path}: unsupported pixel type {arr.dtype}")


def read_image(path: Path | str) -> np.ndarray:
    """Read an image as float32 [H, W, 3] in [0, 1]."""
    arr = _read_raw(Path(path))
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[-1]
    if c == 4:
        arr = arr[..., :3]
    elif c == 2:  # gray + alpha
        arr = arr[..., :1]
    elif c not in (1, 3):
        raise DataError(f"{path}: expected 1, 3 or 4 channels, got {c}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(to_unit_float(arr, path))


def read_mask(path: Path | str) -> np.ndarray:
    """Read a binary mask as bool [H, W]; any two values, the larger is foreground."""
    path = Path(path)
    arr = _read_raw(path)
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]  # drop alpha
        if not (arr == arr[..., :1]).all():
            raise DataError(f"{path}: mask has channels that differ; save it as a single-channel binary image")
        arr = arr[..., 0]
    values = np.unique(arr)
    if len(values) > 2:
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise DataError(
            f"{path}: mask is not binary ({len(values)} distinct values: {shown}); "
            "masks must hold exactly two values such as 0/1 or 0/255"
        )
    if len(values) == 1:
        return np.full(arr.shape, bool(values[0] != 0))
    return arr == values[1]


def write_png(path: Path | str, arr: np.ndarray) -> None:
    """Write uint8 [H, W] or [H, W, 3] as PNG."""
    Image.fromarray(np.ascontiguousarray(arr)).save(path)


def write_mask(path: Path | str, mask: np.ndarray) -> None:
    """Write a bool mask as an 8-bit PNG holding 0 and 255."""
    write_png(path, np.where(mask, 255, 0).astype(np.uint8))


def write_float_tiff(path: Path | str, arr: np.ndarray) -> None:
    """Write float32 [H, W] as a TIFF readable by tifffile, ImageJ, QGIS and GDAL."""
    tifffile.imwrite(str(path), np.asarray(arr, dtype=np.float32))


def to_u8(arr01: np.ndarray) -> np.ndarray:
    return (np.clip(arr01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
