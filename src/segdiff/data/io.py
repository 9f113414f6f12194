"""Reading and writing images and masks, with errors that name the file.

Images: PNG, JPEG, TIFF; RGB, grayscale (replicated to 3 channels), RGBA (alpha dropped), CMYK
(converted to RGB), 8- or 16-bit integers (scaled by the dtype's maximum; negative values of signed
types clipped to 0) or floats (taken as [0, 1], clipped). NaN or infinite values are an error.
Masks: binary with any two values; the larger value is foreground. A mask with one value is
empty if that value is 0, full otherwise. More than two values, or NaN/Inf, is an error.

An image larger than `max_pixels()` (width x height; default 2**28 = 268 M, set with the environment
variable SEGDIFF_MAX_PIXELS, 0 = no limit) is refused from its header, before it is decoded: a
decompression bomb (a small file that decodes to gigabytes) is an error naming the file, not a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..errors import DataError, UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp", ".gif")
DEFAULT_MAX_PIXELS = 2**28


def max_pixels() -> int:
    """The largest image (width x height) segdiff reads: SEGDIFF_MAX_PIXELS, or 2**28; 0 = no limit."""
    value = os.environ.get("SEGDIFF_MAX_PIXELS", "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        n = int(float(value))
    except ValueError:
        raise UserError(f"SEGDIFF_MAX_PIXELS={value!r}: expected a number of pixels such as 300000000") from None
    return n if n > 0 else 0


def check_pixels(path: Path, h: int, w: int) -> None:
    """Refuse an image of h x w pixels over `max_pixels()` (from its header, before decoding it): a DataError
    naming `path`."""
    limit = max_pixels()
    if limit and h * w > limit:
        raise DataError(
            f"{path}: image is {w}x{h} = {h * w:,} pixels, over the limit of {limit:,} (a decompression bomb, or a "
            "very large image: tile it, or raise the limit with the environment variable SEGDIFF_MAX_PIXELS)"
        )


def _tiff_hw(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        shape = shape[1:]
    return (shape[0], shape[1]) if len(shape) >= 2 else (1, shape[0] if shape else 1)


def open_pil(path: Path) -> Image.Image:
    """Open an image with PIL (headers only: no pixels decoded yet); PIL's own decompression-bomb check is
    off, so the caller checks the size with `check_pixels` before reading the pixels."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_raw(path: Path) -> np.ndarray:
    """A PNG, JPEG, TIFF, BMP or GIF file's pixels as stored: [H, W] or [H, W, C] in the file's dtype (palette
    images expanded to RGB/RGBA, CMYK converted to RGB, planar TIFFs made channels-last); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(str(path)) as tif:
                if not tif.series:
                    raise DataError(f"{path}: TIFF holds no image")
                check_pixels(path, *_tiff_hw(tuple(tif.series[0].shape)))
                arr = tif.asarray()
        else:
            with open_pil(path) as im:
                check_pixels(path, im.size[1], im.size[0])
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode == "CMYK":
                    im = im.convert("RGB")
                elif im.mode in ("I;16", "I;16B", "I;16L"):
                    return np.asarray(im).astype(np.uint16)
                arr = np.asarray(im)
    except DataError:
        raise
    except Exception as exc:  # PIL and tifffile raise many types for a corrupt or truncated file
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {str(exc)[:200]})") from None
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF [C, H, W] -> [H, W, C]
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise DataError(f"{path}: expected a 2-D image with optional channels, got shape {arr.shape}")
    return arr


def to_unit_float(arr: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """Scale integer images by their dtype's maximum (negative values clipped to 0) and clip floats to
    [0, 1]; NaN or infinite values are an error naming `path`."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        return np.maximum(out, 0.0) if np.issubdtype(arr.dtype, np.signedinteger) else out
    if np.issubdtype(arr.dtype, np.floating):
        _check_finite(arr, path, "image")
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise DataError(f"{path}: unsupported pixel type {arr.dtype}")


def _check_finite(arr: np.ndarray, path, what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        raise DataError(
            f"{path}: {what} has {n_nan} NaN and {int(bad.sum()) - n_nan} infinite value(s) (first at pixel "
            f"{tuple(int(i) for i in np.argwhere(bad)[0][:2])}); replace them (e.g. with 0) before using it"
        )


def read_image(path: Path | str) -> np.ndarray:
    """Read an image as float32 [H, W, 3] in [0, 1]."""
    arr = read_raw(Path(path))
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
    arr = read_raw(path)
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]  # drop alpha
        if not (arr == arr[..., :1]).all():
            raise DataError(f"{path}: mask has channels that differ; save it as a single-channel binary image")
        arr = arr[..., 0]
    if np.issubdtype(arr.dtype, np.floating):
        _check_finite(arr, path, "mask")
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


# Float probability maps a hair outside [0, 1] (interpolation, float32 sums) are clipped, not refused.
PROB_SLACK = 1e-4


def read_prob(path: Path | str) -> np.ndarray:
    """Read a foreground probability map as float32 [H, W] in [0, 1]: a TIFF or .npy (floats in [0, 1];
    integers scaled by their dtype's maximum) or an 8/16-bit single-channel PNG; errors name the file."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".png":
        rgb = read_image(path)  # 8- or 16-bit, scaled to [0, 1]; gray is replicated to 3 channels
        if not (rgb == rgb[..., :1]).all():
            raise DataError(f"{path}: probability map has channels that differ; save it single-channel")
        return rgb[..., 0]
    try:
        arr = np.load(path, allow_pickle=False) if ext == ".npy" else tifffile.imread(str(path))
    except Exception as exc:  # numpy and tifffile raise many types for a corrupt file
        raise DataError(f"{path}: cannot read probability map ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D probability map [H, W], got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: probability map holds NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -PROB_SLACK or hi > 1 + PROB_SLACK:
            raise DataError(f"{path}: probabilities must lie in [0, 1], found values in [{lo:g}, {hi:g}]")
        return np.clip(arr, 0.0, 1.0).astype(np.float32)
    return to_unit_float(arr, path)  # bool or integer: scaled by the dtype's maximum


def read_class_prob(path: Path | str, K: int) -> np.ndarray:
    """Read K class probabilities as float32 [K, H, W] in [0, 1] (a channels-first TIFF as predict writes
    it, or .npy); errors name the file."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else tifffile.imread(str(path))
    except Exception as exc:  # numpy and tifffile raise many types for a corrupt file
        raise DataError(f"{path}: cannot read probability map ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[0] != K:
        raise DataError(f"{path}: expected class probabilities [{K}, H, W] (one plane per class), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < -PROB_SLACK or arr.max() > 1 + PROB_SLACK:
        raise DataError(f"{path}: class probabilities must be finite and within [0, 1]")
    return np.clip(arr, 0, 1)


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


# -- any number of image channels (multi-channel TIFF, grey kept as one channel) -----------------------

MAX_IMAGE_CHANNELS = 64


def channels_last(arr: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """A 3-D array [C, H, W] or [H, W, C] -> [H, W, C], decided by shape: the channel axis is the one
    (first or last) of at most MAX_IMAGE_CHANNELS that is shorter than both others; when both or neither
    qualify, the layout is ambiguous and an error."""
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 2-D image with optional channels, got shape {arr.shape}")
    a, b, c = arr.shape
    last = c <= MAX_IMAGE_CHANNELS and c < min(a, b)
    first = a <= MAX_IMAGE_CHANNELS and a < min(b, c)
    if last == first:
        raise DataError(
            f"{path}: cannot tell the channel axis of shape {arr.shape} (channels first or last); save it as "
            "[channels, height, width] or [height, width, channels] with fewer channels than pixels per side"
        )
    return np.moveaxis(arr, 0, -1) if first else arr


def _read_tiff_channels(path: Path) -> np.ndarray:
    try:
        with tifffile.TiffFile(str(path)) as tf:
            if not tf.series:
                raise DataError(f"{path}: TIFF holds no image")
            check_pixels(path, *_tiff_hw(tuple(tf.series[0].shape)))
            page = tf.pages[0]
            arr = tf.asarray()
            alpha = page.photometric == tifffile.PHOTOMETRIC.RGB and len(page.extrasamples) > 0
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for a corrupt file
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {str(exc)[:200]})") from None
    if arr.ndim == 4 and 1 in (arr.shape[0], arr.shape[-1]):  # a single plane stored with an extra axis
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    arr = channels_last(np.squeeze(arr) if arr.ndim > 3 else arr, path)
    if alpha and arr.shape[-1] > 3:
        arr = arr[..., :3]  # RGB + alpha (extra samples): alpha dropped
    return arr


def read_image_channels(path: Path | str) -> np.ndarray:
    """Read an image as float32 [H, W, C] in [0, 1] with its own channels: grey 1, RGB 3 (RGBA and grey +
    alpha: alpha dropped), a multi-channel TIFF all of its channels (channels first or last, by shape).
    Integers are scaled by their dtype's maximum, floats clipped to [0, 1]."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        arr = _read_tiff_channels(path)
    else:
        arr = read_raw(path)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]  # PNG/JPEG: grey + alpha, RGBA
    return np.ascontiguousarray(to_unit_float(arr, path))


def match_channels(arr: np.ndarray, channels: int, path: Path | str = "<array>") -> np.ndarray:
    """[H, W, c] -> [H, W, channels]: equal counts pass, grey is replicated for a 3-channel (RGB) model;
    anything else is a DataError naming the file and both counts."""
    c = arr.shape[-1]
    if c == channels:
        return arr
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, axis=-1)
    raise DataError(
        f"{path}: image has {c} channel(s) but the model was trained on {channels}-channel images "
        f"(config model.image_channels); give it images like the training images"
    )
