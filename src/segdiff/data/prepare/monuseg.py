"""MoNuSeg 2018 (Kumar et al., TMI 2017/2020) from the challenge's TIFF images and Aperio XML polygons.

Source discovery (SRC itself and the folders up to two levels below it, hidden ones skipped):
  training  a folder holding `Tissue_Images/` (or `Tissue Images/`, as in the official zip) and
            `Annotations/`: `Tissue_Images/<stem>.tif` pairs with `Annotations/<stem>.xml`;
  test      a folder whose own name contains 'test' (any case) and which directly holds `*.tif`,
            each with `<stem>.xml` beside it (the official `MoNuSegTestData/`).
Either or both may be present; more than one candidate of a kind is an error (point SRC lower).

Masks: every Region polygon is filled (boundary included) at the original resolution, then the
binary mask is box-averaged to size x size and thresholded at 0.5. Images are resized with Lanczos
and written as PNG. This follows the paper, which resizes MoNuSeg to 512x512 (after MedT, [45]).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...errors import DataError, UserError
from ..io import read_image, to_u8
from . import PREPARE_JSON, prepare_output_dir, record, resize_rgb, save_image, save_json, save_mask

TIF_EXTS = (".tif", ".tiff")
TISSUE_DIRS = ("Tissue_Images", "Tissue Images")
SEARCH_DEPTH = 2


@dataclass(frozen=True)
class MonusegItem:
    split: str
    stem: str
    image: Path
    xml: Path


def read_aperio_polygons(xml_path: Path) -> tuple[list[list[tuple[float, float]]], int]:
    """Polygons (lists of (x, y) = (column, row) pixel coordinates) of an Aperio ImageScope XML.

    Layout: Annotations/Annotation/Regions/Region/Vertices/Vertex[@X, @Y], one Region per nucleus.
    Returns (polygons, skipped) where `skipped` counts Regions with fewer than 3 vertices.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DataError(
            f"{xml_path}: malformed XML ({exc}); re-extract this annotation file from the MoNuSeg release"
        ) from None
    except OSError as exc:
        raise DataError(f"{xml_path}: cannot read ({exc})") from None
    if root.tag != "Annotations":
        raise DataError(
            f"{xml_path}: not an Aperio ImageScope annotation (root element <{root.tag}>, "
            "expected <Annotations>); use the XML files of the MoNuSeg release"
        )
    polygons: list[list[tuple[float, float]]] = []
    skipped = 0
    for region in root.iter("Region"):
        pts: list[tuple[float, float]] = []
        for v in region.iterfind("./Vertices/Vertex"):
            try:
                x, y = float(v.get("X")), float(v.get("Y"))
            except (TypeError, ValueError):
                x = y = math.nan
            if not (math.isfinite(x) and math.isfinite(y)):
                raise DataError(
                    f"{xml_path}: Region Id={region.get('Id')} has a Vertex without numeric X and Y "
                    f"({v.attrib}); fix or re-download this annotation file"
                )
            pts.append((x, y))
        if len(pts) < 3:
            skipped += 1
            continue
        polygons.append(pts)
    return polygons, skipped


def rasterize_polygons(polygons: list[list[tuple[float, float]]], width: int, height: int) -> np.ndarray:
    """Fill every polygon (interior and boundary pixels) into a bool [height, width] mask."""
    im = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(im)
    for pts in polygons:
        draw.polygon(pts, fill=255, outline=255)
    return np.asarray(im) > 0


def resize_mask_box(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize bool [H, W] to `size` = (width, height): exact area (box) averaging, then >= 0.5."""
    h, w = mask.shape
    if (w, h) == tuple(size):
        return mask.copy()
    frac = Image.fromarray(mask.astype(np.float32), mode="F").resize(tuple(size), Image.BOX)
    return np.asarray(frac) >= 0.5


def _dirs_below(root: Path, depth: int) -> list[Path]:
    found, frontier = [root], [root]
    for _ in range(depth):
        nxt = []
        for d in frontier:
            try:
                kids = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                kids = []
            nxt.extend(kids)
        found.extend(nxt)
        frontier = nxt
    return found


def _files(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            if p.stem in out:
                raise DataError(f"{p}: two files share the stem '{p.stem}' ({out[p.stem].name}); keep one")
            out[p.stem] = p
    return out


def _pair(split: str, tif_dir: Path, xml_dir: Path) -> list[MonusegItem]:
    tifs, xmls = _files(tif_dir, TIF_EXTS), _files(xml_dir, (".xml",))
    if not tifs:
        raise DataError(f"{tif_dir}: no .tif images in this folder; point --src at the MoNuSeg release")
    for stem, p in tifs.items():
        if stem not in xmls:
            raise DataError(f"{p}: no annotation {xml_dir / (stem + '.xml')}; add it or remove the image")
    for stem, p in xmls.items():
        if stem not in tifs:
            raise DataError(f"{p}: no image {tif_dir / (stem + '.tif')}; add it or remove the annotation")
    return [MonusegItem(split, s, tifs[s], xmls[s]) for s in sorted(tifs)]


def find_monuseg(src: Path) -> list[MonusegItem]:
    """Discover the training layout and/or a test folder under `src` (see the module docstring)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: source folder not found; pass the folder that holds the MoNuSeg release")
    dirs = _dirs_below(src, SEARCH_DEPTH)
    train_roots = [d for d in dirs if any((d / t).is_dir() for t in TISSUE_DIRS) or (d / "Annotations").is_dir()]
    test_dirs = [d for d in dirs if "test" in d.name.lower() and any(p.suffix.lower() in TIF_EXTS for p in d.iterdir())]
    if len(train_roots) > 1:
        raise DataError(
            f"{src}: several MoNuSeg training folders ({', '.join(map(str, train_roots))}); "
            "pass a --src that holds only one"
        )
    if len(test_dirs) > 1:
        raise DataError(
            f"{src}: several MoNuSeg test folders ({', '.join(map(str, test_dirs))}); pass a --src that holds only one"
        )
    items: list[MonusegItem] = []
    if train_roots:
        root = train_roots[0]
        tissue = next((root / t for t in TISSUE_DIRS if (root / t).is_dir()), None)
        if tissue is None:
            raise DataError(
                f"{root / 'Tissue_Images'}: folder not found beside {root / 'Annotations'}; "
                "put the training .tif images there"
            )
        if not (root / "Annotations").is_dir():
            raise DataError(
                f"{root / 'Annotations'}: folder not found beside {tissue}; put the training .xml files there"
            )
        items += _pair("train", tissue, root / "Annotations")
    if test_dirs:
        items += _pair("test", test_dirs[0], test_dirs[0])
    if not items:
        raise DataError(
            f"{src}: no MoNuSeg data found; expected Tissue_Images/ + Annotations/ (training) and/or a "
            "folder whose name contains 'test' holding <stem>.tif with <stem>.xml side by side"
        )
    stems = [it.stem for it in items]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise DataError(f"{src}: stem '{dup[0]}' is in both the training and the test folder; remove one")
    return items


def prepare_monuseg(src: Path, out: Path, size: int = 512, overwrite: bool = False) -> dict:
    """Write OUT/{train,test}/{images,masks}/<stem>.png at size x size and OUT/prepare.json.

    Returns the content of prepare.json (counts per split, polygons, skipped regions, parameters).
    """
    if int(size) != size or size < 1:
        raise UserError(f"--size {size}: must be a positive integer (the paper uses 512)")
    size = int(size)
    src, out = Path(src), Path(out)
    items = find_monuseg(src)
    # Parse every XML before writing anything, so a bad file fails the run up front.
    parsed = {it.stem: read_aperio_polygons(it.xml) for it in items}
    prepare_output_dir(out, src, ("train", "test", PREPARE_JSON), overwrite)

    per_image, counts = [], {"train": 0, "test": 0}
    for it in items:
        polygons, skipped = parsed[it.stem]
        rgb = to_u8(read_image(it.image))
        h, w = rgb.shape[:2]
        mask = rasterize_polygons(polygons, w, h)
        img_r = resize_rgb(rgb, (size, size), Image.LANCZOS)
        mask_r = resize_mask_box(mask, (size, size))
        save_image(out / it.split / "images" / f"{it.stem}.png", img_r)
        save_mask(out / it.split / "masks" / f"{it.stem}.png", mask_r)
        counts[it.split] += 1
        per_image.append(
            {
                "split": it.split,
                "stem": it.stem,
                "source_image": str(it.image.relative_to(src)),
                "width": w,
                "height": h,
                "polygons": len(polygons),
                "skipped_regions": skipped,
                "fg_fraction_native": round(float(mask.mean()), 4),
                "fg_fraction": round(float(mask_r.mean()), 4),
            }
        )
    info = record(
        "monuseg",
        src,
        out,
        {
            "size": size,
            "image_resize": "PIL Lanczos",
            "mask_rasterize": "PIL ImageDraw.polygon, filled with boundary, at the original resolution",
            "mask_resize": "box (area) average of the binary mask, foreground where >= 0.5",
            "image_format": "png",
        },
        counts,
        polygons=sum(d["polygons"] for d in per_image),
        skipped_regions_lt3_vertices=sum(d["skipped_regions"] for d in per_image),
        images=per_image,
    )
    save_json(out / PREPARE_JSON, info)
    return info
