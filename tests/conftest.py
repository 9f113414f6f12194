"""Tiny CPU fixtures: models <= 32 px, C <= 16, one narrow RRDB, small T."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from segdiff import rng
from segdiff.config import (
    AugmentConfig,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    PredictConfig,
    RunConfig,
    TrainConfig,
)
from segdiff.data.io import write_mask, write_png
from segdiff.demo import synthetic_pair

torch.set_num_threads(1)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(module: str):
    """The optional module, or a skip (a failure under CI=true: .ci/run installs every extra the tests use)."""
    try:
        return pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[dev]')")
    except pytest.skip.Exception:
        if IN_CI:
            pytest.fail(f"CI=true but {module} is not installed: .ci/run must install the serve and dev extras")
        raise


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the web page's tests (test_serve.py, test_serve_classes.py)."""
    from segdiff.serve.browser import NOT_FOUND, find_chromium, headless_chromium

    _need("selenium.webdriver")
    if find_chromium() is None:
        if IN_CI:
            pytest.fail(f"CI=true: {NOT_FOUND}")
        pytest.skip(NOT_FOUND)
    driver = headless_chromium(1400, 1000, browser_log=True)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def tiny_config(T: int = 10, **train) -> RunConfig:
    return RunConfig(
        preset="test",
        model=ModelConfig(
            model_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_ds=(2,),
            num_heads=2,
            norm_groups=8,
            rrdb_blocks=1,
            rrdb_nf=8,
            rrdb_gc=4,
        ),
        diffusion=DiffusionConfig(steps=T),
        data=DataConfig(size=16, augment=AugmentConfig(hflip=True, vflip=True)),
        train=TrainConfig(
            **{
                "batch_size": 4,
                "lr": 1e-3,
                "ema_rate": 0.99,
                "max_steps": 4,
                "log_every": 1,
                "val_every": 2,
                "save_every": 2,
                "val_generations": 2,
                "val_sampling_steps": 3,
                **train,
            }
        ),
        predict=PredictConfig(generations=2, sampling_steps=3, mode="pad"),
    )


def make_dataset(root: Path, splits=(("train", 6), ("test", 3)), size: int = 16, seed: int = 0) -> Path:
    root = Path(root)
    for split, n in splits:
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = synthetic_pair(rng.generator(seed, split, i), size)
            write_png(root / split / "images" / f"img{i:02d}.png", image)
            write_mask(root / split / "masks" / f"img{i:02d}.png", mask)
    return root


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


def make_classes_data(
    root: Path, splits=(("train", 6), ("test", 3)), size: int = 16, channels: int = 1, ignore: bool = True
) -> Path:
    """The 3-class texture data (segdiff.demo.synthetic_classes_pair) with classes.json; with `ignore`, a
    one-pixel border of every mask holds the ignore value 255."""
    import json

    import numpy as np
    import tifffile
    from PIL import Image

    from segdiff.demo import CLASS_COLORS, CLASS_NAMES, synthetic_classes_pair

    root = Path(root)
    for split, n in splits:
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = synthetic_classes_pair(rng.generator(seed_of(split), i), size, channels)
            if channels == 1:
                write_png(root / split / "images" / f"img{i:02d}.png", image)
            else:
                tifffile.imwrite(
                    root / split / "images" / f"img{i:02d}.tif", np.moveaxis(image, -1, 0), photometric="minisblack"
                )
            if ignore:
                label = label.copy()
                label[0, :] = label[:, 0] = 255
            Image.fromarray(label).save(root / split / "masks" / f"img{i:02d}.png")
    spec = {
        "classes": [
            {"name": n, "value": i, "color": list(c)} for i, (n, c) in enumerate(zip(CLASS_NAMES, CLASS_COLORS))
        ]
    }
    if ignore:
        spec["ignore"] = 255
    (root / "classes.json").write_text(json.dumps(spec))
    return root


def seed_of(split: str) -> int:
    return {"train": 1, "val": 2, "test": 3}.get(split, 4)


def stitch(tiles, starts, h, w, weight):
    """Blend [n, ..., tile, tile] window outputs into [..., h, w] in one go (the reference the tests hold
    predict's streaming Stitcher to): sum(w * tile) / sum(w) per pixel."""
    from segdiff.predict.tiling import Stitcher

    s = Stitcher(h, w, weight)
    s.add(tiles, starts)
    return s.result()
