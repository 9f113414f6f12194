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
from ..data.folder import pair_split
from ..data.io import read_image, read_mask, write_mask, write_png
from ..errors import UserError
from ..metrics.overlap import confusion, f1_from_confusion, iou_from_confusion
from ..train.loop import train
from .monuseg import val_split


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


def score(model: SegDiff, val_dir: Path, settings) -> dict:
    out = {}
    pairs = [(s.stem, read_image(s.image), read_mask(s.mask)) for s in pair_split(val_dir)]
    for name, kw in settings:
        ious, dices = [], []
        t0 = time.perf_counter()
        for stem, im, m in pairs:
            pred = model.predict(im, keys=[stem], **kw).mask[0].numpy()
            c = confusion(pred, m)
            ious.append(iou_from_confusion(c))
            dices.append(f1_from_confusion(c))
        out[name] = {
            "iou": 100 * float(np.mean(ious)),
            "dice": 100 * float(np.mean(dices)),
            "seconds": time.perf_counter() - t0,
        }
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m segdiff.bench.recipe_cpu",
    )
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--set", action="append", default=[], help="section.field=value (repeatable)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    root = view(a.data, a.out)
    cfg = apply_overrides(narrow_config(), {"train.max_steps": a.steps})
    cfg = apply_overrides(cfg, parse_assignments(a.set), text=True).validate()
    run = a.out / "runs" / a.name
    if run.exists():
        shutil.rmtree(run)
    w0, c0 = time.time(), time.process_time()
    summary = train(root, run, cfg, device="cpu", progress=False)
    wall, cpu = time.time() - w0, time.process_time() - c0
    res = {
        "name": a.name,
        "set": a.set,
        "steps": summary["step"],
        "train_wall_min": wall / 60,
        "train_cpu_min": cpu / 60,
    }
    scores = {}
    for weights in ("raw", "ema"):
        model = SegDiff.load(run, weights=weights, device="cpu")
        if cfg.model.prediction == "onepass":
            settings = [("onepass", {"generations": 1})]
        else:
            settings = [
                ("ddim5x2", {"sampler": "ddim", "steps": 5, "generations": 2}),
                ("ddim1x1", {"sampler": "ddim", "steps": 1, "generations": 1}),
            ]
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
