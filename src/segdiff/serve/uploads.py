"""Checking and decoding uploaded images: the format from the file's first bytes (not its name), the
pixel count from its header before any decoding, then the same conversion as `segdiff predict` for the
model's channel count (segdiff.data.io.read_image_channels and match_channels: grey, RGB, multi-channel
TIFF; alpha dropped). Every refusal is an UploadError with a message for the page."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..data.io import match_channels, read_image_channels
from ..errors import UserError

FORMATS = "PNG, JPEG or TIFF"


class UploadError(UserError):
    """An upload the server refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sniff(data: bytes) -> str | None:
    """'.png', '.jpg', '.tif' from the file's magic bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return ".tif"
    return None


def header_size(data: bytes, ext: str) -> tuple[int, int]:
    """(height, width) from the header alone."""
    if ext == ".tif":
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    with Image.open(io.BytesIO(data)) as im:  # reads the header only
        return im.height, im.width


def decode_upload(name: str, data: bytes, max_pixels: int, channels: int = 3) -> np.ndarray:
    """Uploaded bytes -> float32 [H, W, channels] in [0, 1] for a model of `channels` image channels (a grey
    image is replicated for an RGB model, as `segdiff predict` does), or UploadError naming the file and the
    problem (e.g. an RGB upload to a one-channel model)."""
    shown = name or "upload"
    if not data:
        raise UploadError(f"{shown}: the file is empty")
    ext = sniff(data)
    if ext is None:
        raise UploadError(f"{shown}: not a {FORMATS} image", status=415)
    try:
        h, w = header_size(data, ext)
    except Image.DecompressionBombError as exc:
        raise UploadError(f"{shown}: {exc}", status=413) from None
    except Exception as exc:  # PIL and tifffile raise many types for a corrupt header
        raise UploadError(f"{shown}: cannot read the image header ({type(exc).__name__}: {exc})") from None
    if h * w > max_pixels:
        raise UploadError(
            f"{shown}: {w} x {h} = {h * w:,} pixels is over the limit of {max_pixels:,} pixels "
            "(segdiff serve --max-pixels)",
            status=413,
        )
    # read_image chooses its reader by suffix: write the bytes under the sniffed one
    with tempfile.TemporaryDirectory(prefix="segdiff-upload-") as tmp:
        path = Path(tmp) / f"upload{ext}"
        path.write_bytes(data)
        try:
            image = match_channels(read_image_channels(path), channels, path)
        except UserError as exc:
            raise UploadError(f"{shown}: {str(exc).split(': ', 1)[-1]}") from None
        except Exception as exc:  # a decoder failing on a corrupt body
            raise UploadError(f"{shown}: cannot decode the image ({type(exc).__name__}: {exc})") from None
    return image
