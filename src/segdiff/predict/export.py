"""Writing a prediction: mask PNG (0/255), probability (8-bit PNG + float TIFF), uncertainty (heat-map
PNG + float TIFF) and, on request, every generation, each in its own folder named by the image's stem.

OUT/masks/<stem>.png   OUT/prob/<stem>.{png,tif}   OUT/uncertainty/<stem>.{png,tif}
OUT/generations/<stem>/<k>.png
`segdiff evaluate --pred OUT` reads OUT/masks (and OUT/prob) directly.

K classes (`write_class_prediction`):
OUT/masks/<stem>.png          the label as the data's masks: each pixel the class's value (8-bit, 16-bit
                              when a value exceeds 255), or its colour for classes given by colour only
OUT/color/<stem>.png          the label in the classes' colours
OUT/prob/<stem>.tif           float32 [K, H, W] class probabilities, channels first, in label order
OUT/uncertainty/<stem>.{tif,png}   entropy of the mean class distribution (nats; PNG heat map 0..log K)
OUT/disagreement/<stem>.{tif,png}  fraction of generations whose argmax differs from the label
OUT/generations/<stem>/<k>.png     each generation's argmax in the classes' colours
OUT/classes.json              the classes (read by `segdiff evaluate`)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import faults
from ..atomic import atomic_write, stale_temps
from ..data.io import to_u8, write_float_tiff, write_mask, write_png

SUBDIRS = ("masks", "prob", "uncertainty")
CLASS_SUBDIRS = ("masks", "color", "prob", "uncertainty", "disagreement")  # the binary ones and two more


def heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
    """[H, W] -> RGB uint8 with matplotlib's inferno colour map on [0, vmax]."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(values / vmax, 0, 1))[..., :3] * 255).astype(np.uint8)


def write_prediction(out: Path, stem: str, mask, prob, uncertainty, samples=None) -> None:
    """Arrays [H, W] (samples [G, H, W]) for one image, each file atomically. The mask is written last:
    a mask file marks a finished image (`is_done`), so a restarted `predict` skips it and redoes an image
    that was interrupted, whose other files it then replaces. prob or uncertainty None: that map is not
    written (a resized mask folder that has none: segdiff.metrics.resize)."""
    out = Path(out)
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    # an earlier prediction of this image (--overwrite) stops counting as done before any file changes
    (out / "masks" / f"{stem}.png").unlink(missing_ok=True)
    if samples is not None:
        gdir = out / "generations" / stem
        gdir.mkdir(parents=True, exist_ok=True)
        for k, s in enumerate(samples):
            atomic_write(gdir / f"{k:03d}.png", lambda p, s=s: write_png(p, to_u8(s)))
            faults.point("predict.between")
    if prob is not None:
        atomic_write(out / "prob" / f"{stem}.tif", lambda p: write_float_tiff(p, prob))
        faults.point("predict.between")
        atomic_write(out / "prob" / f"{stem}.png", lambda p: write_png(p, to_u8(prob)))
        faults.point("predict.between")
    if uncertainty is not None:
        atomic_write(out / "uncertainty" / f"{stem}.tif", lambda p: write_float_tiff(p, uncertainty))
        faults.point("predict.between")
        # the spread of values in [0, 1] is at most 0.5
        atomic_write(out / "uncertainty" / f"{stem}.png", lambda p: write_png(p, heatmap(uncertainty, 0.5)))
        faults.point("predict.between")
    atomic_write(out / "masks" / f"{stem}.png", lambda p: write_mask(p, mask))


def remove_partials(out: Path, stem: str) -> None:
    """Remove the temporary files of an image's interrupted writers (call while holding its lock)."""
    out = Path(out)
    for sub in CLASS_SUBDIRS:  # binary and K-class outputs
        for ext in (".png", ".tif"):
            for tmp in stale_temps(out / sub / f"{stem}{ext}"):
                tmp.unlink(missing_ok=True)
    gdir = out / "generations" / stem
    if gdir.is_dir():
        for tmp in gdir.glob(".*.partial-*"):
            tmp.unlink(missing_ok=True)


def is_done(out: Path, stem: str) -> bool:
    return (Path(out) / "masks" / f"{stem}.png").is_file()


def stems_with_partials(out: Path) -> set[str]:
    """Stems of images whose interrupted writers left temporary files in OUT."""
    out = Path(out)
    stems = {p.parent.name for p in out.glob("generations/*/.*.partial-*")}
    for sub in CLASS_SUBDIRS:  # binary and K-class outputs
        stems |= {p.name[1:].rsplit(".partial-", 1)[0] for p in out.glob(f"{sub}/.*.partial-*")}
    return stems


def write_class_prediction(out: Path, stem: str, classes, label, prob, entropy, disagreement, samples=None) -> None:
    """One image of a K-class model: label [H, W] class indices, prob [K, H, W], entropy and disagreement
    [H, W], samples [G, K, H, W] or None. The label PNG is written last (it marks a finished image), and an
    earlier label of this image is removed first, as in `write_prediction`."""
    out = Path(out)
    for sub in CLASS_SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    # an earlier prediction of this image (--overwrite) stops counting as done before any file changes
    (out / "masks" / f"{stem}.png").unlink(missing_ok=True)
    if samples is not None:
        gdir = out / "generations" / stem
        gdir.mkdir(parents=True, exist_ok=True)
        for k, s in enumerate(samples):
            atomic_write(gdir / f"{k:03d}.png", lambda p, s=s: write_png(p, classes.color_image(s.argmax(0))))
            faults.point("predict.between")
    vmax = float(np.log(max(classes.K, 2)))
    maps = (
        ("prob", ".tif", lambda p: write_float_stack(p, prob)),
        ("uncertainty", ".tif", lambda p: write_float_tiff(p, entropy)),
        ("uncertainty", ".png", lambda p: write_png(p, heatmap(entropy, vmax))),
        ("disagreement", ".tif", lambda p: write_float_tiff(p, disagreement)),
        ("disagreement", ".png", lambda p: write_png(p, heatmap(disagreement, 1.0))),
        ("color", ".png", lambda p: write_png(p, classes.color_image(label))),
    )
    for sub, ext, write in maps:
        atomic_write(out / sub / f"{stem}{ext}", write)
        faults.point("predict.between")
    atomic_write(out / "masks" / f"{stem}.png", lambda p: write_png(p, classes.mask_image(label)))


def write_float_stack(path: Path, arr) -> None:
    """float32 [K, H, W] as one multi-page grey TIFF (page k = class k)."""
    import tifffile

    tifffile.imwrite(str(path), np.asarray(arr, dtype=np.float32), photometric="minisblack")


def write_classes_json(out: Path, classes) -> None:
    import json

    from ..atomic import atomic_write_text

    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out) / "classes.json", json.dumps(classes.to_json(), indent=2) + "\n")
