"""`segdiff demo`: the embedded default, end to end with no download.

Makes a seeded synthetic data set in which the foreground differs from the background by TEXTURE
(fine stripes) and not by intensity (both have the same mean and range), trains the `tiny-fast` preset
(the tiny network with the short-budget recipe of issues 9 and 20) for DEMO_STEPS steps,
predicts the test split with multiple generations, evaluates, and writes a report folder:
report.json (protocol and metrics, beside the best single global intensity threshold's IoU on the
same split) and figure.png (as the paper's Fig. 2: input, generations, their mean, uncertainty, truth).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import rng
from .atomic import atomic_write_text
from .config import preset
from .data.io import read_image, read_mask, to_u8, write_mask, write_png
from .errors import UserError
from .metrics.baseline import DEMO_THRESHOLDS, best_global_threshold
from .predict.figure import classes_figure, result_figure


def synthetic_pair(g: torch.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """One image [size, size, 3] uint8 and mask [size, size] bool.

    Foreground: 1-3 random ellipses filled with stripes of period 3-5 px at a random angle.
    Background: smooth random texture over the same intensity range. A global tint varies per image.
    """
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    mask = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 4, (), generator=g))):
        cy, cx = (torch.rand(2, generator=g) * (size - 12) + 6).tolist()
        ry, rx = (torch.rand(2, generator=g) * 6 + 4).tolist()
        a = float(torch.rand((), generator=g)) * math.pi
        dy, dx = yy - cy, xx - cx
        u, v = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)
        mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1
    period = 3 + 2 * float(torch.rand((), generator=g))
    ang = float(torch.rand((), generator=g)) * math.pi
    phase = float(torch.rand((), generator=g)) * 2 * math.pi
    stripes = 0.5 + 0.35 * torch.sin(2 * math.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period + phase)
    smooth = torch.rand(1, 1, 5, 5, generator=g)
    smooth = F.interpolate(smooth, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    smooth = 0.15 + 0.7 * (smooth - smooth.min()) / (smooth.max() - smooth.min() + 1e-6)
    gray = torch.where(mask, stripes, smooth) + 0.04 * torch.randn(size, size, generator=g)
    tint = 0.8 + 0.4 * torch.rand(3, generator=g)
    image = (gray[..., None] * tint).clamp(0, 1)
    return to_u8(image.numpy()), mask.numpy()


CLASS_NAMES = ("background", "stripes", "checks", "speckle")
CLASS_COLORS = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200))


def _texture(kind: int, yy: torch.Tensor, xx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Texture of class `kind` in [0.15, 0.85] with mean 0.5: 1 stripes (period 3-5 px, any angle),
    2 checks (a one-pixel checkerboard), 3 speckle (independent uniform pixels)."""
    size = yy.shape[0]
    ang = float(torch.rand((), generator=g)) * math.pi
    phase = float(torch.rand((), generator=g)) * 2 * math.pi
    u = xx * math.cos(ang) + yy * math.sin(ang)
    if kind == 1:
        period = 3 + 2 * float(torch.rand((), generator=g))
        return 0.5 + 0.35 * torch.sin(2 * math.pi * u / period + phase)
    if kind == 2:  # a one-pixel checkerboard (axis-aligned: the pixel grid would alias anything finer)
        return 0.5 + 0.35 * (1 - 2 * ((xx + yy + (phase > math.pi)) % 2))
    return 0.15 + 0.7 * torch.rand(size, size, generator=g)


def synthetic_classes_pair(
    g: torch.Generator, size: int = 32, channels: int = 1, n_classes: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """One image uint8 [size, size] (channels 1) or [size, size, channels] and label uint8 [size, size]
    holding 0 (background) and the classes 1 stripes, 2 checks, 3 speckle (the first n_classes of them).

    2-4 random ellipses, each of a random class, on the smooth background texture of the binary demo.
    Every texture spans the same intensity range with the same mean: the classes differ by texture only.
    With several channels, each is the grey texture times a per-image gain plus its own noise.
    """
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    smooth = torch.rand(1, 1, 5, 5, generator=g)
    smooth = F.interpolate(smooth, size=(size, size), mode="bicubic", align_corners=False)[0, 0]
    gray = 0.15 + 0.7 * (smooth - smooth.min()) / (smooth.max() - smooth.min() + 1e-6)
    label = torch.zeros(size, size, dtype=torch.uint8)
    lo, span = max(3, size // 5), max(2, size // 5)
    for _ in range(int(torch.randint(2, 5, (), generator=g))):
        kind = int(torch.randint(1, n_classes + 1, (), generator=g))
        cy, cx = (torch.rand(2, generator=g) * (size - 2 * lo) + lo).tolist()
        ry, rx = (torch.rand(2, generator=g) * span + lo).tolist()
        a = float(torch.rand((), generator=g)) * math.pi
        dy, dx = yy - cy, xx - cx
        u, v = dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)
        inside = (u / rx) ** 2 + (v / ry) ** 2 <= 1
        gray = torch.where(inside, _texture(kind, yy, xx, g), gray)
        label[inside] = kind
    gain = 0.8 + 0.4 * torch.rand(channels, generator=g)
    image = gray[..., None] * gain + 0.04 * torch.randn(size, size, channels, generator=g)
    image = to_u8(image.clamp(0, 1).numpy())
    return (image[..., 0] if channels == 1 else image), label.numpy()


def make_classes_dataset(
    root: Path,
    n_train: int = 160,
    n_val: int = 16,
    n_test: int = 32,
    size: int = 32,
    channels: int = 1,
    seed: int = 0,
    classes_json: bool = True,
    n_classes: int = 3,
) -> Path:
    """The 3-class texture data set: grey PNG images (channels 1) or channels-first multi-channel TIFFs,
    8-bit label PNG masks holding 0..3, and ROOT/classes.json naming the classes (unless classes_json is
    False: then the classes come from a scan of the masks)."""
    import tifffile

    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        if not n:
            continue
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = synthetic_classes_pair(rng.generator(seed, "classes", split, i), size, channels, n_classes)
            stem = f"{split}_{i:04d}"
            if channels == 1:
                write_png(root / split / "images" / f"{stem}.png", image)
            else:
                tifffile.imwrite(
                    root / split / "images" / f"{stem}.tif", np.moveaxis(image, -1, 0), photometric="minisblack"
                )
            write_png(root / split / "masks" / f"{stem}.png", label)
    if classes_json:
        named = list(zip(CLASS_NAMES, CLASS_COLORS))[: n_classes + 1]
        spec = {"classes": [{"name": n, "value": i, "color": list(c)} for i, (n, c) in enumerate(named)]}
        (root / "classes.json").write_text(json.dumps(spec, indent=2) + "\n")
    return root


def intensity_classifier(images: list[np.ndarray], labels: list[np.ndarray], K: int, bins: int = 64) -> np.ndarray:
    """A per-pixel intensity classifier fitted on training pairs: for each of `bins` bins of the pixel's
    mean intensity over channels, the most frequent class. Returns the lookup table [bins]."""
    counts = np.zeros((bins, K), np.int64)
    for im, lab in zip(images, labels):
        grey = im.reshape(*im.shape[:2], -1).astype(np.float64).mean(-1) / (255.0 if im.dtype == np.uint8 else 1.0)
        b = np.clip((grey * bins).astype(np.int64), 0, bins - 1)
        keep = lab < K
        np.add.at(counts, (b[keep], lab[keep].astype(np.int64)), 1)
    return counts.argmax(1)


def apply_intensity_classifier(table: np.ndarray, image: np.ndarray) -> np.ndarray:
    bins = len(table)
    grey = image.reshape(*image.shape[:2], -1).astype(np.float64).mean(-1) / (255.0 if image.dtype == np.uint8 else 1.0)
    return table[np.clip((grey * bins).astype(np.int64), 0, bins - 1)]


def make_dataset(
    root: Path, n_train: int = 160, n_val: int = 16, n_test: int = 32, size: int = 32, seed: int = 0
) -> Path:
    root = Path(root)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = synthetic_pair(rng.generator(seed, "demo", split, i), size)
            write_png(root / split / "images" / f"{split}_{i:04d}.png", image)
            write_mask(root / split / "masks" / f"{split}_{i:04d}.png", mask)
    return root


# issue 20: the tiny network with the -fast recipe reached the demo's accuracy in half the steps of the
# `tiny` preset's 1200 (docs/results.md)
DEMO_PRESET, DEMO_STEPS = "tiny-fast", 600


def _tiny_config(max_steps, max_minutes, generations, steps):
    """The demos' config: DEMO_PRESET with the demo's length and time cap, its values checked (also the
    prediction overrides) before any work. The time cap is a safety net for slow machines (the demo
    promises < 10 minutes on 2 cores); the report says how many steps were run."""
    cfg = preset(DEMO_PRESET)
    cfg = replace(
        cfg,
        train=replace(cfg.train, max_steps=DEMO_STEPS if max_steps is None else max_steps, max_minutes=max_minutes),
    ).validate()
    cfg.predict.override({"generations": generations, "steps": steps}, cfg.diffusion.steps, cfg.data.size)
    return cfg


@dataclass
class _Run:
    """What both demos share: the trained model, its sampling options and the test split's evaluation."""

    model: object  # segdiff.api.SegDiff
    opts: object  # its sampling options (the preset's protocol unless --generations/--steps)
    train_summary: dict
    predict_summary: dict
    metrics: dict
    t_train: float


def _train_predict_evaluate(out: Path, data: Path, cfg, generations, steps, progress, device, t0: float) -> _Run:
    """Train the tiny run on DATA into OUT/run, predict DATA/test into OUT/pred with multiple generations and
    evaluate it into OUT/metrics.json (earlier run and pred folders of the demo are replaced)."""
    from .api import SegDiff
    from .metrics.evaluate import evaluate_dirs
    from .predict.run import predict_folder
    from .train.loop import train

    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)
    train_summary = train(data, run, cfg, device=device, progress=progress)
    t_train = time.time() - t0
    model = SegDiff.load(run, device=device)
    opts = model.sampling_options(generations=generations, steps=steps)  # the preset's protocol by default
    pred_dir = out / "pred"
    shutil.rmtree(pred_dir, ignore_errors=True)
    pred = predict_folder(model, data / "test" / "images", pred_dir, batch_images=32, progress=progress, opts=opts)
    metrics = evaluate_dirs(pred_dir, data / "test", out=out / "metrics.json")
    return _Run(model, opts, train_summary, pred, metrics, t_train)


def _predict_shown(run: _Run, images: list[np.ndarray], keys: list[str], return_samples: bool = False):
    """The prediction of the images shown in figure.png (the same keys, hence the same noise, as predict)."""
    batch = torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in images])
    return run.model.predict(batch, keys=keys, opts=run.opts, return_samples=return_samples)


def _report(
    out: Path,
    run: _Run,
    data_text: str,
    test_images: int,
    test: dict,
    baseline: dict,
    t0: float,
    classes: list[str] | None = None,
    T: int | None = None,
) -> dict:
    """report.json (written atomically): the protocol, the test scores, the baseline and the seconds.
    The binary demo records T, the multi-class demo its classes (each where it always stood in the file)."""
    model, opts = run.model, run.opts
    report = {
        "protocol": {
            "data": data_text,
            **({"classes": classes} if classes is not None else {}),
            "train_images": 160,
            "val_images": 16,
            "test_images": test_images,
            "preset": model.config.preset,
            "training_steps": run.train_summary["step"],
            "stopped_by": run.train_summary["stopped_by"],
            "batch_size": model.config.train.batch_size,
            "weights": Path(model.weights_file or "").name,
            "generations": opts.generations,
            "sampling_steps": opts.steps_for(model.config.diffusion.steps),
            **({"T": T} if T is not None else {}),
            "sampler": opts.sampler,
            "variance": opts.variance,
            "device": str(model.device),
            "threads": torch.get_num_threads(),
        },
        "test": test,
        **baseline,
        "seconds": {"train": run.t_train, "predict": run.predict_summary["seconds"], "total": time.time() - t0},
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def run_demo(
    out: str | Path = "segdiff-demo",
    max_steps: int | None = None,
    max_minutes: float | None = 7.0,
    generations: int | None = None,
    steps: int | None = None,
    progress: bool = True,
    device: str | None = None,
    classes: int | None = None,
    channels: int = 1,
) -> dict:
    """`segdiff demo`: the binary texture data set, the tiny preset, prediction with multiple generations,
    evaluation beside the best single global grey-level threshold, report.json and figure.png. With
    `classes`: the multi-class demo (run_classes_demo)."""
    if classes is not None:
        return run_classes_demo(out, classes, channels, max_steps, max_minutes, generations, steps, progress, device)
    out = Path(out)
    t0 = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = _tiny_config(max_steps, max_minutes, generations, steps)
    data = make_dataset(out / "data")
    run = _train_predict_evaluate(out, data, cfg, generations, steps, progress, device, t0)

    stems = sorted(p.stem for p in (data / "test" / "images").iterdir())
    images = [read_image(data / "test" / "images" / f"{s}.png") for s in stems]
    masks = [read_mask(data / "test" / "masks" / f"{s}.png") for s in stems]
    # the demo's protocol: chosen on the test images themselves (segdiff.metrics.baseline)
    threshold = best_global_threshold(zip(images, masks), DEMO_THRESHOLDS)

    vis = _predict_shown(run, images[:4], stems[:4], return_samples=True)
    result_figure(
        out / "figure.png",
        images[:4],
        vis.prob.numpy(),
        vis.uncertainty.numpy(),
        masks[:4],
        samples=vis.samples.numpy(),
    )
    metrics = run.metrics
    return _report(
        out,
        run,
        "synthetic: striped ellipses (foreground) on smooth texture of the same intensity range, 32x32",
        len(stems),
        {"iou": metrics["iou"], "f1": metrics["f1"]},
        {
            "best_global_threshold": {"iou": threshold.fit_iou, "threshold": threshold.threshold},
            "margin_over_threshold": metrics["iou"] - threshold.fit_iou,
        },
        t0,
        T=run.model.config.diffusion.steps,
    )


def run_classes_demo(
    out: str | Path = "segdiff-demo",
    n_classes: int = 3,
    channels: int = 1,
    max_steps: int | None = None,
    max_minutes: float | None = 7.0,
    generations: int | None = None,
    steps: int | None = None,
    progress: bool = True,
    device: str | None = None,
) -> dict:
    """`segdiff demo --classes 3`: the multi-class texture data set (background + 3 classes told apart by
    texture only), the tiny preset, prediction with multiple generations, multi-class evaluation against
    a per-pixel intensity classifier fitted on train, report.json and figure.png."""
    from .data.classes import read_labels
    from .data.folder import pair_split
    from .data.io import read_image_channels
    from .metrics.classes import mean_foreground_iou

    if n_classes not in (2, 3):
        raise UserError(f"--classes {n_classes}: the synthetic data set has 2 or 3 foreground classes")
    out = Path(out)
    t0 = time.time()
    cfg = _tiny_config(max_steps, max_minutes, generations, steps)
    data = make_classes_dataset(out / "data", channels=channels, n_classes=n_classes)
    run = _train_predict_evaluate(out, data, cfg, generations, steps, progress, device, t0)
    cs = run.model.classes

    def load(split):
        samples = pair_split(data / split)
        return [read_image_channels(s.image) for s in samples], [read_labels(s.mask, cs) for s in samples]

    train_images, train_labels = load("train")
    test_images, test_labels = load("test")
    table = intensity_classifier(train_images, train_labels, cs.K)
    base = mean_foreground_iou([apply_intensity_classifier(table, im) for im in test_images], test_labels, cs.K)

    show = 4
    vis = _predict_shown(run, test_images[:show], [s.stem for s in pair_split(data / "test")[:show]])
    classes_figure(
        out / "figure.png",
        test_images[:show],
        vis.mask.numpy(),
        vis.prob.numpy(),
        vis.uncertainty.numpy(),
        test_labels[:show],
        cs,
    )
    metrics = run.metrics
    return _report(
        out,
        run,
        f"synthetic: {n_classes} foreground classes ({', '.join(cs.names[1:])}) told apart by texture "
        f"only, on smooth background texture of the same intensity range, 32x32, {channels} channel(s)",
        len(test_images),
        {
            "miou_fg": metrics["miou_fg"],
            "miou": metrics["miou"],
            "mdice_fg": metrics["mdice_fg"],
            "pixel_accuracy": metrics["pixel_accuracy"],
            "per_class_iou": {n: c["iou"] for n, c in metrics["per_class"].items()},
        },
        {"intensity_classifier": {"miou_fg": base, "bins": 64}, "margin_over_intensity": metrics["miou_fg"] - base},
        t0,
        classes=list(cs.names),
    )
