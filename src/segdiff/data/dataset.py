"""Training data: the split of a data root, loading into memory, and step-keyed batches.

Every per-sample draw (which image, augmentation, timestep, noise) comes from a generator keyed by
(seed, step, global sample index): rank r of R processes computes indices r*B/R .. (r+1)*B/R - 1 of
the global batch of a step and gets exactly what a single process would.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import rng
from ..config import DataConfig
from ..diffusion.schedule import sample_timestep
from ..errors import DataError
from .classes import ClassSet, read_labels
from .folder import Sample, pair_split
from .io import match_channels, read_image, read_image_channels, read_mask
from .transforms import augment, resize_image, resize_labels, resize_mask


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    val_source: str  # "val folder" or "held out of train (seed S, fraction F)"

    def to_json(self) -> dict:
        return {
            "val_source": self.val_source,
            "train": [s.stem for s in self.train],
            "val": [s.stem for s in self.val],
        }


def make_splits(root: Path, val_fraction: float, seed: int) -> Splits:
    """ROOT/train and ROOT/val, or a seeded fraction of ROOT/train held out when ROOT/val is absent."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if not (root / "train").is_dir():
        raise DataError(f"{root}: no train/ folder; expected ROOT/train/images and ROOT/train/masks")
    train = pair_split(root / "train")
    if (root / "val").is_dir():
        return Splits(train, pair_split(root / "val"), "val folder")
    if len(train) < 2 or val_fraction <= 0:
        return Splits(train, [], "none")
    n_val = min(len(train) - 1, max(1, round(val_fraction * len(train))))
    perm = torch.randperm(len(train), generator=rng.generator(seed, "val-split")).tolist()
    val_idx = set(perm[:n_val])
    return Splits(
        [s for i, s in enumerate(train) if i not in val_idx],
        [s for i, s in enumerate(train) if i in val_idx],
        f"held out of train (seed {seed}, fraction {val_fraction})",
    )


def load_pair(
    sample: Sample, classes: ClassSet | None = None, channels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> image [C, H, W] float32 in [0, 1], mask [1, H, W]; sizes must agree.

    Binary (classes None): the mask is float32 0/1. Multi-class: uint8 class indices, IGNORE_INDEX for
    ignored pixels. channels None: the image as RGB (grey replicated, as the binary path always read it);
    otherwise its own channels, matched to `channels` (`io.match_channels`).
    """
    if channels is None:
        image = read_image(sample.image)
    else:
        image = match_channels(read_image_channels(sample.image), channels, sample.image)
    mask = read_mask(sample.mask) if classes is None else read_labels(sample.mask, classes)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but image {sample.image.name} is "
            f"{image.shape[1]}x{image.shape[0]} (width x height); they must have the same size"
        )
    mask_t = torch.from_numpy(mask)[None]
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), mask_t.float() if classes is None else mask_t


def image_channels(samples: list[Sample]) -> int:
    """The channel count of a set of training images: their common count, 3 when grey and RGB images
    are mixed (grey replicated); other mixtures are a DataError naming a file."""
    counts: dict[int, Path] = {}
    for s in samples:
        counts.setdefault(read_image_channels(s.image).shape[-1], s.image)
    if len(counts) == 1:
        return next(iter(counts))
    if set(counts) == {1, 3}:
        return 3
    (c0, p0), (c1, p1) = sorted(counts.items())[:2]
    raise DataError(f"{p1}: image has {c1} channel(s) but {p0.name} has {c0}; all images need the same channels")


def channel_stats(images: list[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over all pixels of all images."""
    total = sum(im[0].numel() for im in images)
    s = sum(im.double().sum(dim=(1, 2)) for im in images)
    s2 = sum((im.double() ** 2).sum(dim=(1, 2)) for im in images)
    mean = s / total
    std = (s2 / total - mean**2).clamp(min=1e-12).sqrt().clamp(min=1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class TrainBatches:
    """Training pairs held in memory (uint8 images when 8-bit, else float32) and the step-keyed batch of
    any step. With `channels` (the model's image_channels), images keep their own channels; None reads
    them as RGB, as the binary path always did. Multi-class data (cfg.classes) keeps uint8 label maps."""

    def __init__(
        self,
        samples: list[Sample],
        cfg: DataConfig,
        T: int,
        seed: int,
        t_sampling: str = "uniform",
        channels: int | None = None,
        p_t_max: float = 0.0,
    ):
        if not samples:
            raise DataError("no training images")
        self.cfg, self.T, self.seed, self.t_sampling = cfg, T, seed, t_sampling
        self.p_t_max = p_t_max
        self.classes = ClassSet.from_config(cfg)
        self.mask_channels = 1 if self.classes is None else self.classes.K
        self.out_hw = (cfg.augment.crop or cfg.size,) * 2
        self.images, self.masks = [], []
        self.scale = 255.0
        for s in samples:
            image, mask = load_pair(s, self.classes, channels)
            if self.scale == 255.0 and not torch.equal((image * 255).round() / 255, image):
                # not an 8-bit image (16-bit, float): keep every image as float32 from now on
                self.images, self.scale = [im.float() / 255 for im in self.images], 1.0
            if cfg.augment.crop is None and tuple(image.shape[1:]) != (cfg.size, cfg.size):
                # no crop in this preset: train at the preset's size, as predict resizes to it
                image = resize_image(image[None], (cfg.size, cfg.size))[0]
                if self.classes is None:
                    mask = resize_mask(mask[None], (cfg.size, cfg.size))[0]
                else:
                    mask = resize_labels(mask[None], (cfg.size, cfg.size), self.classes.K)[0]
            if cfg.augment.crop and min(image.shape[1:]) < cfg.augment.crop:
                raise DataError(
                    f"{s.image}: image is {image.shape[2]}x{image.shape[1]}, smaller than the training "
                    f"crop {cfg.augment.crop}; use larger images or another preset"
                )
            self.images.append((image * 255).round().to(torch.uint8) if self.scale == 255.0 else image)
            self.masks.append(mask.to(torch.uint8))

    def __len__(self) -> int:
        return len(self.images)

    def float_images(self) -> list[torch.Tensor]:
        return [im.float() / self.scale for im in self.images]

    def index(self, gidx: int) -> int:
        """Dataset index of global sample gidx: a seeded permutation per epoch (each image once per epoch)."""
        epoch, pos = divmod(gidx, len(self.images))
        return int(self._epoch_perm(epoch)[pos])

    @functools.lru_cache(maxsize=2)  # noqa: B019  (a batch spans at most two epochs; the object lives all run)
    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.images), generator=rng.generator(self.seed, "epoch", epoch))

    def sample(self, step: int, gidx: int, batch_size: int):
        """-> image [C, h, w] in [0, 1], x0 [M, h, w], t (int), eps [M, h, w] (M = mask channels).

        Binary: x0 in {-1, 1}. Multi-class: x0 is the one-hot label in {-1, 1} per class channel (0 on
        ignored pixels), followed by valid [1, h, w] (0 on ignored pixels, which count in no loss).
        """
        g = rng.generator(self.seed, step, gidx)
        i = self.index(step * batch_size + gidx)
        image = self.images[i].float() / self.scale
        if self.classes is None:
            image, mask = augment(image, self.masks[i].float(), self.cfg.augment, self.out_hw, g)
            t = sample_timestep(self.T, self.t_sampling, g, self.p_t_max)
            eps = torch.randn((1, *self.out_hw), generator=g)
            return image, mask * 2 - 1, t, eps
        K = self.classes.K
        label = self.masks[i][0].long()
        onehot = torch.nn.functional.one_hot(label.clamp(max=K), K + 1).permute(2, 0, 1).float()  # K = ignore
        image, onehot = augment(image, onehot, self.cfg.augment, self.out_hw, g)
        t = sample_timestep(self.T, self.t_sampling, g, self.p_t_max)
        eps = torch.randn((K, *self.out_hw), generator=g)
        valid = 1 - onehot[K:]
        x0 = (onehot[:K] * 2 - 1) * valid
        return image, x0, t, eps, valid

    def batch(self, step: int, batch_size: int, start: int = 0, stop: int | None = None):
        """Global-batch indices start..stop-1 of `step` -> image [n,C,h,w], x0 [n,M,h,w], t [n], eps [n,M,h,w]
        (and valid [n,1,h,w] for multi-class data)."""
        items = [self.sample(step, j, batch_size) for j in range(start, batch_size if stop is None else stop)]
        cols = list(zip(*items))
        out = [torch.stack(cols[0]), torch.stack(cols[1]), torch.tensor(cols[2]), torch.stack(cols[3])]
        return tuple(out + [torch.stack(c) for c in cols[4:]])


class StepDataset(torch.utils.data.Dataset):
    """Item k is the batch of step first_step + k (this rank's share), for a DataLoader with workers."""

    def __init__(self, batches: TrainBatches, first_step: int, last_step: int, batch_size: int, start: int, stop: int):
        self.b, self.first, self.n = batches, first_step, max(0, last_step - first_step)
        self.batch_size, self.start, self.stop = batch_size, start, stop

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int):
        return self.b.batch(self.first + k, self.batch_size, self.start, self.stop)


def write_split(path: Path, splits: Splits) -> None:
    from ..atomic import atomic_write_text

    atomic_write_text(path, json.dumps(splits.to_json(), indent=2) + "\n")
