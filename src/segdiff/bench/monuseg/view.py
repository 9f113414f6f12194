"""Phase 1, the data view: OUT/data, symbolic links into DATA split into train, val (a seeded draw) and test
(with --tiny: central crops of val and test written as small PNG files), and the splits read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from ... import rng
from ...atomic import atomic_write_text
from ...data.folder import pair_split
from ...data.io import read_image, read_mask, write_mask, write_png
from ...errors import UserError
from .run import Bench, log


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src.resolve())


def val_split(stems: list[str], n_val: int, seed: int) -> list[str]:
    """A seeded draw of n_val training stems (sorted), independent of the file order on disk."""
    stems = sorted(stems)
    if not 0 < n_val < len(stems):
        raise UserError(f"--val-images {n_val}: must be between 1 and {len(stems) - 1}")
    perm = torch.randperm(len(stems), generator=rng.generator(seed, "monuseg-val")).tolist()
    return sorted(stems[i] for i in perm[:n_val])


def centre_crop(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if min(h, w) < size:
        raise UserError(f"--tiny-crop {size}: larger than an image ({w}x{h})")
    y, x = (h - size) // 2, (w - size) // 2
    return arr[y : y + size, x : x + size]


def build_view(
    data: Path, out: Path, n_val: int, seed: int, tiny_crop: int | None = None, test_images: int | None = None
) -> dict:
    """OUT/data/{train,val,test}/{images,masks}: symbolic links into DATA (never copies). With tiny_crop,
    val and test hold the central tiny_crop x tiny_crop pixels instead (small PNG files written under OUT)."""
    data = Path(data)
    for split in ("train", "test"):
        if not (data / split / "images").is_dir() or not (data / split / "masks").is_dir():
            raise UserError(
                f"{data}: expected {split}/images and {split}/masks (the layout of "
                "../shared/data/monuseg or of `segdiff prepare monuseg`)"
            )
    train_samples = pair_split(data / "train")
    test_samples = pair_split(data / "test")
    if test_images:
        test_samples = test_samples[:test_images]
    val_stems = set(val_split([s.stem for s in train_samples], n_val, seed))
    view = out / "data"
    if view.exists():
        shutil.rmtree(view)  # only links (and, with --tiny, crops) written by an earlier run
    parts = {
        "train": [s for s in train_samples if s.stem not in val_stems],
        "val": [s for s in train_samples if s.stem in val_stems],
        "test": test_samples,
    }
    for split, samples in parts.items():
        for s in samples:
            if tiny_crop and split != "train":
                for sub in ("images", "masks"):
                    (view / split / sub).mkdir(parents=True, exist_ok=True)
                image = to_u8(centre_crop(read_image(s.image), tiny_crop))
                write_png(view / split / "images" / f"{s.stem}.png", image)
                write_mask(view / split / "masks" / f"{s.stem}.png", centre_crop(read_mask(s.mask), tiny_crop))
            else:
                link(s.image, view / split / "images" / s.image.name)
                link(s.mask, view / split / "masks" / s.mask.name)
    split = {k: [s.stem for s in v] for k, v in parts.items()}
    atomic_write_text(view / "split.json", json.dumps({"seed": seed, "source": str(data.resolve()), **split}, indent=2))
    return split


def to_u8(arr01: np.ndarray) -> np.ndarray:
    return np.clip(np.round(arr01 * 255), 0, 255).astype(np.uint8)


def load_split(folder: Path) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    return [
        (s.stem, torch.from_numpy(read_image(s.image)).permute(2, 0, 1), read_mask(s.mask)) for s in pair_split(folder)
    ]


def data_phase(bench: Bench) -> dict:
    """OUT/data, the view of --data: train, val (a seeded draw of --val-images) and test stems."""
    args = bench.args
    split = bench.phases.run(
        "data",
        build_view,
        args.data,
        bench.out,
        args.val_images,
        args.seed,
        args.tiny_crop if args.tiny else None,
        args.test_images,
    )
    log(
        f"data view {bench.view}: {len(split['train'])} train, {len(split['val'])} val ({', '.join(split['val'])}), "
        f"{len(split['test'])} test; budget {args.budget_minutes:g} min, training {args.train_minutes:.2f} min"
    )
    return split
