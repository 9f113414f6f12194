"""The data-folder convention: ROOT/{train,val,test}/{images,masks}/<stem>.<ext>, paired by stem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    missing = sorted(set(images) - set(masks))
    extra = sorted(set(masks) - set(images))
    if missing:
        raise DataError(
            f"{images[missing[0]]}: no mask with stem '{missing[0]}' in {split_dir / 'masks'}"
            + (f" ({len(missing)} images unpaired)" if len(missing) > 1 else "")
        )
    if extra:
        raise DataError(
            f"{masks[extra[0]]}: no image with stem '{extra[0]}' in {split_dir / 'images'}"
            + (f" ({len(extra)} masks unpaired)" if len(extra) > 1 else "")
        )
    return [Sample(s, images[s], masks[s]) for s in sorted(images)]
