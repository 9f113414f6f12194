"""The data-folder convention: ROOT/{train,val,test}/{images,masks}/<stem>.<ext>, paired by stem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .io import IMAGE_EXTS, MASK_EXTS

# files that operating systems put in folders, skipped; any other file with an unsupported extension is an error
IGNORED_FILES = ("thumbs.db", "desktop.ini")


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    mask: Path | None


def list_files(folder: Path, exts: tuple[str, ...], what: str) -> dict[str, Path]:
    """Map stem -> file for the files of `folder` with one of `exts`. Duplicate stems and files with another
    extension are errors; hidden files (.*), Thumbs.db and desktop.ini are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name.lower() in IGNORED_FILES:
            continue  # folders, hidden files (and the temporary files of atomic writes), system files
        if p.suffix.lower() not in exts:
            raise DataError(
                f"{p}: not a supported {what} file ({', '.join(exts)}); convert it or move it out of {folder}"
            )
        if p.stem in found:
            raise DataError(f"{p}: two {what} files share the stem '{p.stem}' ({found[p.stem].name})")
        found[p.stem] = p
    if not found:
        raise DataError(f"{folder}: no {what} files ({', '.join(exts)}) in this folder")
    return found


def list_images(path: Path) -> list[Path]:
    """One image file, or the images of a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTS:
            raise DataError(f"{path}: not an image file ({', '.join(IMAGE_EXTS)})")
        return [path]
    return list(list_files(path, IMAGE_EXTS, "image").values())


def pair_split(split_dir: Path, require_masks: bool = True) -> list[Sample]:
    """Pair SPLIT/images/<stem>.* with SPLIT/masks/<stem>.*; unpaired files are an error."""
    split_dir = Path(split_dir)
    images = list_files(split_dir / "images", IMAGE_EXTS, "image")
    if not require_masks and not (split_dir / "masks").is_dir():
        return [Sample(s, p, None) for s, p in images.items()]
    masks = list_files(split_dir / "masks", MASK_EXTS, "mask")
    check_paired(images, masks, "mask", split_dir / "masks", noun="images")
    check_paired(masks, images, "image", split_dir / "images", noun="masks")
    return [Sample(s, images[s], masks[s]) for s in sorted(images)]


def check_paired(
    files: dict[str, Path], other: dict[str, Path], other_what: str, other_dir: Path, noun: str = "files"
) -> None:
    """Every stem of `files` must have a file in `other` (stem -> path, as `list_files` returns): the first
    unpaired file is a DataError naming it, `other_what` and `other_dir`, with the count of unpaired `noun`."""
    unpaired = sorted(set(files) - set(other))
    if unpaired:
        more = f" ({len(unpaired)} {noun} unpaired)" if len(unpaired) > 1 else ""
        raise DataError(f"{files[unpaired[0]]}: no {other_what} with stem '{unpaired[0]}' in {other_dir}{more}")


def check_same_size(a: np.ndarray, a_path: Path, b: np.ndarray, b_path: Path) -> None:
    """Maps [H, W] read from two paired files must have the same size: a DataError naming both files."""
    if a.shape != b.shape:
        raise DataError(f"{a_path}: size {a.shape[1]}x{a.shape[0]} differs from {b_path} ({b.shape[1]}x{b.shape[0]})")


# Lower rank wins when one stem has several probability files (predict writes <stem>.tif and <stem>.png).
PROB_RANK = {".tif": 0, ".tiff": 0, ".npy": 1, ".png": 2}


def list_prob_files(folder: Path) -> dict[str, Path]:
    """Map stem -> probability map (`io.read_prob` reads it), preferring .tif/.tiff over .npy over .png for
    the same stem; two maps of one stem and rank, or none at all, are DataErrors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: probability folder not found")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        rank = PROB_RANK.get(p.suffix.lower())
        if rank is None or not p.is_file() or p.name.startswith("."):
            continue
        old = found.get(p.stem)
        if old is not None and PROB_RANK[old.suffix.lower()] == rank:
            raise DataError(f"{p}: two probability maps share the stem '{p.stem}' ({old.name})")
        if old is None or rank < PROB_RANK[old.suffix.lower()]:
            found[p.stem] = p
    if not found:
        raise DataError(f"{folder}: no probability maps ({', '.join(PROB_RANK)}) in this folder")
    return found
