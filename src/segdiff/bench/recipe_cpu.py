"""Recipe exploration on a CPU (issue 9): a narrow network on MoNuSeg crops, one training lever at a time,
scored on the 4 validation images only (never the test split).

    PYTHONPATH=src python3 -m segdiff.bench.recipe_cpu --data ../shared/data/monuseg --out /tmp/recipe \
        --name x0 --set model.prediction=x0 [--set train.t_sampling=high_noise ...] [--steps 400]

Every run: the same narrow network (`narrow_config`: the `tiny` preset's, 1.17 M parameters), random
32 x 32 crops of the 26 training images with the monuseg preset's augmentation, batch 16, the same number
of STEPS (so the same work: every lever here costs the same per step), one CPU thread. Validation: the 4
held-out training images of segdiff.bench.monuseg (same seeded draw), their central 128 x 128 pixels,
32 x 32 windows (stride 32, the quadrant protocol scaled down), DDIM 5 steps x 2 generations (eta 0) and
DDIM 1 step x 1 generation, raw and EMA weights; one-pass models: one forward.
Reported: val IoU / Dice (per-image mean, %), steps, wall minutes, and CPU minutes of the process
(time.process_time; with one thread this is close to the uncontended compute time even when other jobs
share the cores). One JSON line per run is appended to OUT/recipe.jsonl.

Issue 20 adds: `--dataset texture | classes`, the demos' binary and 3-class texture data (tiny preset
network and data, 32 x 32 images, scored on their 16 validation images, never the test split); beside
accuracy the paper's 10-bin calibration score (per-image mean; K classes: of the top-class probability
against its correctness) and the AUROC of the per-pixel uncertainty for telling wrong from right pixels
(diffusion: std over generations, K classes the entropy of the mean distribution; `conf_auroc`: the
same from the mean probability's own confidence, which is all a one-pass model has); `--sample
NAME=SAMPLER:STEPS:GENERATIONS[:START_T]` (repeatable) for the sampling protocols scored, and
`--score-only` to score an existing run of OUT/runs again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..api import SegDiff
from ..config import DataConfig, RunConfig, apply_overrides, parse_assignments, preset
from ..data.classes import read_labels
from ..data.folder import pair_split
from ..data.io import read_image, read_image_channels, read_mask, write_mask, write_png
from ..errors import UserError
from ..metrics.calibration import calibration_score
from ..metrics.classes import mean_foreground_iou
from ..metrics.overlap import confusion, f1_from_confusion, iou_from_confusion
from ..metrics.uncertainty import confidence_uncertainty, error_auroc
from ..train.loop import train
from .monuseg import val_split

DATASETS = ("monuseg", "texture", "classes")
DEFAULT_SAMPLING = ("ddim5x2=ddim:5:2", "ddim1x1=ddim:1:1")


def narrow_config(crop: int = 32) -> RunConfig:
    """The `tiny` preset's network (C = 32, channel_mult (1, 2, 2), one residual block per level, one narrow
    RRDB block; 1.17 M parameters) and training settings (batch 16, AdamW 1e-3 after 50 warm-up steps,
    EMA 0.999) on random crop x crop crops with the monuseg preset's augmentation."""
    cfg = preset("tiny")
    mon = preset("monuseg").data.augment
    return dataclasses.replace(
        cfg,
        preset="recipe-cpu",
        data=DataConfig(size=crop, augment=dataclasses.replace(mon, crop=crop)),
        predict=dataclasses.replace(cfg.predict, mode="tile"),
        # the loop's own final validation is kept cheap (one generation, one step): scoring is below
        train=dataclasses.replace(
            cfg.train, log_every=25, val_every=0, save_every=0, val_generations=1, val_sampling_steps=1
        ),
    )


def view(data: Path, out: Path, crop: int = 128) -> Path:
    """OUT/view/{train,val}: links to the 26 training images; central crops of the 4 val images (PNG)."""
    root = out / "view"
    if (root / "val").is_dir():
        return root
    samples = pair_split(data / "train")
    val = set(val_split([s.stem for s in samples], 4, 0))
    for s in samples:
        split = "val" if s.stem in val else "train"
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        if split == "train":
            (root / "train" / "images" / s.image.name).symlink_to(s.image.resolve())
            (root / "train" / "masks" / s.mask.name).symlink_to(s.mask.resolve())
        else:
            im, m = read_image(s.image), read_mask(s.mask)
            y = (im.shape[0] - crop) // 2
            write_png(
                root / "val" / "images" / f"{s.stem}.png",
                np.round(im[y : y + crop, y : y + crop] * 255).astype(np.uint8),
            )
            write_mask(root / "val" / "masks" / f"{s.stem}.png", m[y : y + crop, y : y + crop])
    return root


def texture_config(dataset: str) -> RunConfig:
    """The demos' network and data (the `tiny` preset: 32 x 32 images, flips) with the recipe runs' cadence."""
    cfg = narrow_config()
    tiny = preset("tiny")
    cfg.data, cfg.predict = tiny.data, dataclasses.replace(tiny.predict, mode="pad")
    return cfg


def texture_data(dataset: str, out: Path) -> Path:
    """OUT/<dataset>_data: the demo's data set (train 160, val 16, test 32; the test split is not used)."""
    from ..demo import make_classes_dataset, make_dataset

    root = out / f"{dataset}_data"
    if not (root / "val").is_dir():
        (make_dataset if dataset == "texture" else make_classes_dataset)(root)
    return root


def parse_sampling(items) -> list[tuple[str, dict]]:
    """["ddim5x2=ddim:5:2", "warm=ddim:3:4:40"] -> [(name, predict keyword arguments)]."""
    out = []
    for item in items:
        name, _, spec = item.partition("=")
        parts = spec.split(":")
        if not name or len(parts) not in (3, 4):
            raise UserError(f"--sample {item}: expected NAME=SAMPLER:STEPS:GENERATIONS[:START_T]")
        kw = {"sampler": parts[0], "steps": int(parts[1]), "generations": int(parts[2])}
        if len(parts) == 4:
            kw["start_t"] = int(parts[3])
        out.append((name, kw))
    return out


def score(model: SegDiff, val_dir: Path, settings) -> dict:
    """Per setting: IoU / Dice (binary) or foreground mIoU (K classes) in %, the calibration score, the
    error AUROC of the uncertainty map and of the mean probability's confidence, pooled over the images."""
    out = {}
    cs = model.classes
    if cs is None:
        pairs = [(s.stem, read_image(s.image), read_mask(s.mask)) for s in pair_split(val_dir)]
    else:
        pairs = [(s.stem, read_image_channels(s.image), read_labels(s.mask, cs)) for s in pair_split(val_dir)]
    for name, kw in settings:
        ious, dices, cals, preds, unc, conf, wrong = [], [], [], [], [], [], []
        t0 = time.perf_counter()
        for stem, im, m in pairs:
            p = model.predict(im, keys=[stem], **kw)
            pred, prob = p.mask[0].numpy(), p.prob[0].numpy()
            if cs is None:
                c = confusion(pred, m)
                ious.append(iou_from_confusion(c))
                dices.append(f1_from_confusion(c))
                cals.append(calibration_score(prob, m))
                conf.append(confidence_uncertainty(prob).ravel())
                keep = np.ones(m.shape, bool)
            else:
                preds.append(pred)
                keep = m < cs.K  # ignored pixels are neither right nor wrong
                top = prob.max(0)
                cals.append(calibration_score(top[keep], (pred == m)[keep]))
                conf.append(1 - top[keep])
            unc.append(p.uncertainty[0].numpy()[keep])
            wrong.append((pred != m)[keep])
        w = np.concatenate(wrong)
        res = {
            "calibration": float(np.mean(cals)),
            "unc_auroc": error_auroc(np.concatenate(unc), w),
            "conf_auroc": error_auroc(np.concatenate(conf), w),
            "seconds": time.perf_counter() - t0,
        }
        if cs is None:
            res.update(iou=100 * float(np.mean(ious)), dice=100 * float(np.mean(dices)))
        else:
            res.update(iou=100 * mean_foreground_iou(preds, [m for _, _, m in pairs], cs.K))
        out[name] = res
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m segdiff.bench.recipe_cpu",
    )
    p.add_argument("--data", type=Path, default=None, help="the MoNuSeg data folder (--dataset monuseg)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--set", action="append", default=[], help="section.field=value (repeatable)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dataset", choices=DATASETS, default="monuseg")
    p.add_argument("--sample", action="append", default=None, help="NAME=SAMPLER:STEPS:GENERATIONS[:START_T]")
    p.add_argument("--score-only", action="store_true", help="score the existing run OUT/runs/NAME again")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.dataset == "monuseg":
        if a.data is None:
            raise UserError("--data: give the MoNuSeg data folder for --dataset monuseg")
        root, cfg = view(a.data, a.out), narrow_config()
    else:
        root, cfg = texture_data(a.dataset, a.out), texture_config(a.dataset)
    cfg = apply_overrides(cfg, {"train.max_steps": a.steps})
    cfg = apply_overrides(cfg, parse_assignments(a.set), text=True).validate()
    run = a.out / "runs" / a.name
    res = {"name": a.name, "dataset": a.dataset, "set": a.set}
    if a.score_only:
        if not (run / "config.json").is_file():
            raise UserError(f"{run}: no run to score (train it first, without --score-only)")
        cfg = RunConfig.load(run / "config.json")
        res["score_only"] = True
    else:
        if run.exists():
            shutil.rmtree(run)
        w0, c0 = time.time(), time.process_time()
        summary = train(root, run, cfg, device="cpu", progress=False)
        wall, cpu = time.time() - w0, time.process_time() - c0
        res.update(steps=summary["step"], train_wall_min=wall / 60, train_cpu_min=cpu / 60)
    scores = {}
    for weights in ("raw", "ema"):
        model = SegDiff.load(run, weights=weights, device="cpu")
        if cfg.model.prediction == "onepass":
            settings = [("onepass", {"generations": 1})]
        else:
            settings = parse_sampling(a.sample or DEFAULT_SAMPLING)
        scores[weights] = score(model, root / "val", settings)
    res["val"] = scores
    res["threads"] = a.threads
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    with open(a.out / "recipe.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        sys.exit(f"error: {exc}")
