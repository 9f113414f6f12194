"""Volumes as 2D slices: loading a case (channels checked against each other and the label), intensity
normalisation per modality, the slice axis, the step-keyed training batches of slices, and restacking.

Memory: a case is read when a slice of it is drawn and kept in a least-recently-used cache of
`data.volume.cache_cases` cases; the training set is never held in memory at once. At start-up each case
is read once (one at a time, through the cache): its files are checked whole and its slices holding
foreground indexed.

Normalisation (recorded per channel in `data.volume.intensity`, applied alike at predict):
- "zscore": per case, (x - mean) / std over the case's voxels (MRI-like channels);
- "ct": clipped to the 0.5 and 99.5 percentiles of the training foreground's intensities, then
  (x - mean) / std with that foreground's mean and std (as nnU-Net's CTNormalization);
- "none": the values as stored.
The network's own per-channel normalisation (`data.mean`, `data.std`) is then the identity (0 and 1).
"""

from __future__ import annotations

import collections
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import rng
from ..classset import ClassSet
from ..config import DataConfig, RunConfig
from ..diffusion.schedule import sample_timestep
from ..errors import DataError
from .dataset import Splits
from .nnunet import Case, DatasetJson, list_cases, split_cases
from .transforms import geometric, resize_image, resize_labels
from .volume_io import read_array, read_info

CT_SAMPLES_PER_CASE = 10_000  # foreground voxels drawn per training case for the CT statistics (as nnU-Net)


# -- slicing ----------------------------------------------------------------------------------------
def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """[i, j, k] (or [C, i, j, k] with channels first) -> the slices along `axis` first: [n, a, b] ([C, n, a, b])."""
    lead = volume.ndim - 3
    return np.moveaxis(volume, lead + axis, lead)


def from_slices(stack: np.ndarray, axis: int) -> np.ndarray:
    """The inverse of `to_slices`: [n, a, b, ...] stacked slices -> the volume [i, j, k, ...]."""
    return np.moveaxis(stack, 0, axis)


def resolve_axis(spacings: list[tuple[float, float, float]]) -> int:
    """The axis of the largest median spacing (the first on ties: np.argmax)."""
    return int(np.argmax(np.median(np.asarray(spacings, np.float64), axis=0)))


# -- normalisation ----------------------------------------------------------------------------------
def channel_schemes(names: tuple[str, ...], normalization: str) -> list[str]:
    if normalization != "auto":
        return [normalization] * len(names)
    return ["ct" if n.strip().upper() == "CT" else "none" if n.strip() == "noNorm" else "zscore" for n in names]


def ct_statistics(cases: list[Case], channel: int, classes: ClassSet, seed: int) -> dict:
    """0.5 / 99.5 percentiles, mean and std of up to CT_SAMPLES_PER_CASE foreground voxels per training case."""
    picked = []
    for i, case in enumerate(cases):
        label = read_labels_volume(case.label, classes)
        fg = (label > 0) & (label < classes.K)
        values = read_array(case.images[channel])[fg]
        if len(values) > CT_SAMPLES_PER_CASE:
            g = np.random.default_rng(rng.key(seed, "ct-stats", i))
            values = values[g.choice(len(values), CT_SAMPLES_PER_CASE, replace=False)]
        picked.append(values.astype(np.float64))
    allv = np.concatenate(picked) if picked else np.zeros(0)
    if len(allv) == 0:
        raise DataError(f"{cases[0].label if cases else 'training set'}: no foreground voxels for the CT statistics")
    return {
        "low": float(np.percentile(allv, 0.5)),
        "high": float(np.percentile(allv, 99.5)),
        "mean": float(allv.mean()),
        "std": float(allv.std()),
    }


def normalise(arr: np.ndarray, spec: dict) -> np.ndarray:
    """One channel's voxels -> float32 normalised by `spec` (an entry of data.volume.intensity)."""
    x = arr.astype(np.float32)
    if spec["scheme"] == "zscore":
        mean, std = float(x.mean(dtype=np.float64)), max(float(x.std(dtype=np.float64)), 1e-8)
        return ((x - np.float32(mean)) / np.float32(std)).astype(np.float32)
    if spec["scheme"] == "ct":
        clipped = np.clip(x, np.float32(spec["low"]), np.float32(spec["high"]))
        return ((clipped - np.float32(spec["mean"])) / np.float32(max(spec["std"], 1e-8))).astype(np.float32)
    return x


# -- cases -----------------------------------------------------------------------------------------
def read_labels_volume(path: Path, classes: ClassSet) -> np.ndarray:
    """A label volume -> uint8 class indices [i, j, k]; a value not in dataset.json is a DataError naming it."""
    raw = read_array(path, np.float64)
    if not np.array_equal(raw, np.round(raw)):
        raise DataError(f"{path}: label volume holds non-integer values; labels are integer values from dataset.json")
    return classes.labels(raw.astype(np.int64).reshape(-1, 1), path).reshape(raw.shape)


def check_case(case: Case) -> None:
    """Every channel, and the label, on the grid of channel 0 (shape and affine): a DataError naming the file."""
    ref = read_info(case.images[0])
    for p in (*case.images[1:], *((case.label,) if case.label is not None else ())):
        problem = ref.same_grid(read_info(p))
        if problem:
            what = "label" if p == case.label else "channel"
            raise DataError(f"{p}: this {what}'s {problem}; resample it onto its image's grid")


def load_case(case: Case, intensity: tuple[dict, ...], axis: int, classes: ClassSet | None = None):
    """-> image float32 [C, n, a, b] normalised, slices along `axis` first; label uint8 [n, a, b] (or None)."""
    check_case(case)
    image = np.stack([normalise(read_array(p), spec) for p, spec in zip(case.images, intensity)])
    label = None
    if classes is not None and case.label is not None:
        label = np.ascontiguousarray(to_slices(read_labels_volume(case.label, classes), axis))
    return np.ascontiguousarray(to_slices(image, axis)), label


class CaseCache:
    """The `size` most recently used cases (image and label), read on demand."""

    def __init__(self, cases: list[Case], intensity, axis: int, classes: ClassSet, size: int):
        self.cases, self.intensity, self.axis, self.classes, self.size = cases, intensity, axis, classes, size
        self.held: collections.OrderedDict[int, tuple] = collections.OrderedDict()

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self.held:
            self.held.move_to_end(i)
            return self.held[i]
        self.held[i] = load_case(self.cases[i], self.intensity, self.axis, self.classes)
        while len(self.held) > self.size:
            self.held.popitem(last=False)
        return self.held[i]


# -- training --------------------------------------------------------------------------------------
def with_volume_shape(config: RunConfig, ds: DatasetJson, train: list[Case], seed: int) -> RunConfig:
    """A new run's config with what the data set decides: classes and K from dataset.json, the channels,
    the slice axis (when not set) and the normalisation of each channel with its statistics."""
    vc = config.data.volume
    for case in train:
        check_case(case)
    axis = vc.slice_axis if vc.slice_axis is not None else resolve_axis([read_info(c.images[0]).spacing for c in train])
    intensity = []
    for c, (name, scheme) in enumerate(zip(ds.channel_names, channel_schemes(ds.channel_names, vc.normalization))):
        spec = {"channel": name, "scheme": scheme}
        if scheme == "ct":
            spec |= ct_statistics(train, c, ds.classes, seed)
        intensity.append(spec)
    C = len(ds.channel_names)
    data = replace(
        config.data,
        **ds.classes.to_config(),
        mean=(0.0,) * C,
        std=(1.0,) * C,
        volume=replace(vc, slice_axis=axis, intensity=tuple(intensity)),
    )
    model = replace(config.model, image_channels=C, mask_channels=ds.classes.K)
    return replace(config, data=data, model=model)


class VolumeBatches:
    """Step-keyed training batches of slices (the interface of `dataset.TrainBatches`): each draw picks,
    with probability data.volume.foreground_fraction, a slice holding foreground, else any slice; then the
    geometric augmentation (intensity augmentation is not applied: the slices are z-scores, not [0, 1])."""

    def __init__(
        self, cases: list[Case], cfg: DataConfig, T: int, seed: int, t_sampling: str = "uniform", p_t_max: float = 0.0
    ):
        if not cases:
            raise DataError("no training cases")
        self.cfg, self.T, self.seed, self.t_sampling, self.p_t_max = cfg, T, seed, t_sampling, p_t_max
        self.classes = ClassSet.from_config(cfg)
        vc = cfg.volume
        self.axis, self.fraction = vc.slice_axis, vc.foreground_fraction
        self.cache = CaseCache(cases, vc.intensity, vc.slice_axis, self.classes, vc.cache_cases)
        self.all: list[tuple[int, int]] = []
        self.fg: list[tuple[int, int]] = []
        for i in range(len(cases)):  # one case at a time: which slices hold foreground
            # every file read whole once here, so that a damaged one stops the run before its first step
            _, label = self.cache.get(i)
            has = ((label > 0) & (label < self.classes.K)).reshape(len(label), -1).any(1)
            self.all += [(i, z) for z in range(len(label))]
            self.fg += [(i, z) for z in np.flatnonzero(has).tolist()]
        self.out_hw = (cfg.augment.crop or cfg.size,) * 2

    def __len__(self) -> int:
        return len(self.all)

    def slice(self, i: int, z: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Slice z of case i: image [C, h, w] float32, label [1, h, w] uint8, at the training size."""
        image, label = self.cache.get(i)
        im, lab = torch.from_numpy(image[:, z].copy()), torch.from_numpy(label[z].copy())[None]
        if self.cfg.augment.crop is None and tuple(im.shape[1:]) != (self.cfg.size,) * 2:
            hw = (self.cfg.size, self.cfg.size)
            im, lab = resize_image(im[None], hw)[0], resize_labels(lab[None], hw, self.classes.K)[0]
        return im, lab

    def sample(self, step: int, gidx: int, batch_size: int):
        """-> image [C, h, w], x0 [K, h, w] one-hot in {-1, 1}, t, eps [K, h, w], valid [1, h, w]."""
        g = rng.generator(self.seed, step, gidx)
        pool = self.fg if self.fg and float(torch.rand((), generator=g)) < self.fraction else self.all
        i, z = pool[int(torch.randint(len(pool), (), generator=g))]
        image, label = self.slice(i, z)
        K = self.classes.K
        onehot = torch.nn.functional.one_hot(label[0].long().clamp(max=K), K + 1).permute(2, 0, 1).float()
        image, onehot = geometric(image, onehot, self.cfg.augment, self.out_hw, g)
        t = sample_timestep(self.T, self.t_sampling, g, self.p_t_max)
        eps = torch.randn((K, *self.out_hw), generator=g)
        valid = 1 - onehot[K:]
        return image, (onehot[:K] * 2 - 1) * valid, t, eps, valid

    def batch(self, step: int, batch_size: int, start: int = 0, stop: int | None = None):
        items = [self.sample(step, j, batch_size) for j in range(start, batch_size if stop is None else stop)]
        cols = list(zip(*items))
        return (
            torch.stack(cols[0]),
            torch.stack(cols[1]),
            torch.tensor(cols[2]),
            torch.stack(cols[3]),
            torch.stack(cols[4]),
        )


def val_slices(cases: list[Case], cfg: DataConfig, limit: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Validation pairs (image [C, h, w], label [1, h, w]): slices of the val cases, round robin over the cases,
    each case's foreground slices evenly spaced (its middle slice when it has none), up to `limit`."""
    classes, vc = ClassSet.from_config(cfg), cfg.volume
    per_case = []
    for case in cases:
        image, label = load_case(case, vc.intensity, vc.slice_axis, classes)
        fg = np.flatnonzero(((label > 0) & (label < classes.K)).reshape(len(label), -1).any(1))
        zs = fg if len(fg) else np.asarray([len(label) // 2])
        k = min(len(zs), max(1, -(-(limit or len(zs)) // max(len(cases), 1))))
        chosen = zs[np.linspace(0, len(zs) - 1, k).round().astype(int)]
        per_case.append(
            [(torch.from_numpy(image[:, z].copy()), torch.from_numpy(label[z].copy())[None]) for z in chosen]
        )
    pairs = [p for group in zip_longest_flat(per_case) for p in group]
    return pairs[: limit or None]


def zip_longest_flat(groups: list[list]) -> list[list]:
    """Round robin: the first item of every group, then the second, ..."""
    return [[g[i] for g in groups if i < len(g)] for i in range(max((len(g) for g in groups), default=0))]


def volume_training(data: Path, config: RunConfig, resume: bool):
    """The split by case, the run's config (new runs: shaped by the data set), the training batches and the
    validation pairs of an nnU-Net data root."""
    tc = config.train
    ds, cases = list_cases(data)
    train, val = split_cases(cases, config.data.val_fraction, tc.seed)
    if not resume:
        config = with_volume_shape(config, ds, train, tc.seed)
    source = f"held out of imagesTr by case (seed {tc.seed}, fraction {config.data.val_fraction})" if val else "none"
    batches = VolumeBatches(train, config.data, config.diffusion.steps, tc.seed, tc.t_sampling, tc.p_t_max)
    return Splits(train, val, source), config, batches, val_slices(val, config.data, tc.val_max_images)
