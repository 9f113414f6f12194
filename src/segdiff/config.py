"""Typed configuration of a run, and the named presets of the paper.

A run is one `RunConfig`; it is written as config.json beside the weights and read back by
`SegDiff.load`. Presets are named configs, not code paths.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, UserError


@dataclass
class ModelConfig:
    """eps_theta(x_t, I, t) = D(E(F(x_t) + G(I), t), t) (paper eq. 17)."""

    image_channels: int = 3
    model_channels: int = 128  # C
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 3  # per encoder level; the decoder has one more (improved-diffusion)
    # Attention after the residual blocks of the levels with these downsampling factors, fixed here so
    # that a larger input does not create huge attention maps (16x16 and 8x8 at the training size).
    attention_ds: tuple[int, ...] = (8, 16)
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 32
    rrdb_blocks: int = 15  # G: number of RRDB blocks
    rrdb_nf: int = 64  # G: trunk width
    rrdb_gc: int = 32  # G: dense-block growth channels
    time_embedding: str = "sinusoidal"  # "sinusoidal" (authors' code) or "learned" (paper's look-up table)

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this; predict pads to it."""
        return 2 ** (len(self.channel_mult) - 1)


@dataclass
class DiffusionConfig:
    steps: int = 100  # T
    # "scaled": the authors' code, linear 1e-4..2e-2 scaled by 1000/T (1e-3..0.2 at T=100), which ends
    # near pure noise (sqrt(alpha_bar_T) ~ 0.0045). "paper": the paper's literal eq. 14, 1e-4..2e-2 at
    # any T, which at T=100 leaves sqrt(alpha_bar_T) ~ 0.60: x_T is far from the N(0, I) sampling starts from.
    schedule: str = "scaled"
    # Reverse-process variance: "large" = beta_t (what the authors' code ran for the paper's tables,
    # improved-diffusion's FIXED_LARGE), "small" = beta-tilde_t (paper eq. 13).
    variance: str = "large"
    clip_x0: bool = True  # clip the predicted x0 to [-1, 1] inside each step (authors' code)


@dataclass
class AugmentConfig:
    """Joint image/mask augmentation (the same geometry for both)."""

    crop: int | None = None  # random crop of this size after the geometric transform (MoNuSeg: 256)
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0  # maximum absolute rotation in degrees (180 = any angle)
    hflip: bool = False
    vflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


@dataclass
class DataConfig:
    size: int = 128  # the network's training input size
    # How `predict` handles an image of another size: "resize" to size x size and back, "tile" with
    # size x size windows (stride = tile_stride), or "pad" to the network's stride and crop back.
    predict_mode: str = "resize"
    tile_stride: int | None = None  # None = size (non-overlapping windows, the MoNuSeg quadrant protocol)
    tile_blend: str = "uniform"  # weights of overlapping windows: "uniform" or "gaussian" (lower at borders)
    val_fraction: float = 0.1  # held out of train when ROOT/val is absent
    mean: tuple[float, float, float] | None = None  # per-channel image normalisation, set from train data
    std: tuple[float, float, float] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_steps: int = 100_000
    max_minutes: float | None = None  # stop after this wall time (benchmarks), then save
    ema_rate: float = 0.9999
    warmup_steps: int = 0  # linear learning-rate warm-up
    log_every: int = 50
    val_every: int = 2000
    save_every: int = 1000
    val_generations: int = 4
    val_steps: int | None = None  # sampling steps at validation (None = T)
    val_max_images: int | None = 16
    seed: int = 0
    num_workers: int = 0


@dataclass
class PredictConfig:
    generations: int = 30
    steps: int | None = None  # None = T
    sampler: str = "ddpm"
    batch_generations: int = 30  # generations per network batch (memory)


@dataclass
class RunConfig:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from .atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        return _from_dict(cls, d, source)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config.json not found; is this a segdiff run folder?")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(d, str(path))


def _from_dict(cls: type, d: dict[str, Any], source: str):
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected an object for {cls.__name__}")
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in d.items():
        if key not in fields:
            raise CheckpointError(f"{source}: unknown setting '{key}' in {cls.__name__}")
        ftype = fields[key].type
        sub = _DATACLASSES.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if sub is not None:
            value = _from_dict(sub, value, source)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


_DATACLASSES = {
    c.__name__: c for c in (ModelConfig, DiffusionConfig, AugmentConfig, DataConfig, TrainConfig, PredictConfig)
}


def _vaihingen() -> RunConfig:
    return RunConfig(
        preset="vaihingen",
        model=ModelConfig(channel_mult=(1, 1, 1, 2, 2, 4, 4), attention_ds=(16, 32), rrdb_blocks=6, dropout=0.1),
        data=DataConfig(
            size=256,
            predict_mode="resize",
            augment=AugmentConfig(
                scale=(0.75, 1.5),
                rotate=180.0,
                hflip=True,
                vflip=True,
                brightness=0.6,
                contrast=0.5,
                saturation=0.4,
                hue=0.025,
            ),
        ),
        train=TrainConfig(batch_size=8, num_workers=4),
    )


def _monuseg() -> RunConfig:
    return RunConfig(
        preset="monuseg",
        model=ModelConfig(channel_mult=(1, 1, 1, 2, 2, 4, 4), attention_ds=(16, 32), rrdb_blocks=12),
        data=DataConfig(
            size=256,
            predict_mode="tile",  # the paper's protocol: 256 x 256 windows with stride 256 at 512
            augment=AugmentConfig(
                crop=256,
                scale=(0.75, 1.25),
                rotate=22.0,
                hflip=True,
                vflip=True,
                brightness=0.4,
                contrast=0.4,
                saturation=0.4,
                hue=0.1,
            ),
        ),
        train=TrainConfig(batch_size=8, num_workers=4),
    )


def _cityscapes() -> RunConfig:
    return RunConfig(
        preset="cityscapes",
        model=ModelConfig(channel_mult=(1, 1, 2, 2, 4, 4), attention_ds=(8, 16), rrdb_blocks=15),
        data=DataConfig(
            size=128,
            predict_mode="resize",
            augment=AugmentConfig(scale=(0.75, 1.25), rotate=22.0, hflip=True),
        ),
        train=TrainConfig(batch_size=30, num_workers=4),
    )


def _tiny() -> RunConfig:
    """Small enough to train on 2 CPU cores in minutes (the demo and the tests)."""
    return RunConfig(
        preset="tiny",
        model=ModelConfig(
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_ds=(4,),
            num_heads=4,
            norm_groups=8,
            rrdb_blocks=1,
            rrdb_nf=16,
            rrdb_gc=8,
        ),
        # variance, steps and generations: the cheapest setting within 0.5 IoU points of the paper's 30 x 100
        # on the demo model's validation images (`segdiff study`, docs/results.md)
        diffusion=DiffusionConfig(steps=100, variance="small"),
        data=DataConfig(size=32, predict_mode="pad", augment=AugmentConfig(hflip=True, vflip=True)),
        train=TrainConfig(
            batch_size=16,
            lr=1e-3,
            ema_rate=0.999,
            warmup_steps=50,
            max_steps=1200,
            log_every=50,
            val_every=400,
            save_every=400,
            val_generations=4,
            val_steps=5,
        ),
        predict=PredictConfig(generations=10, steps=5),
    )


PRESETS = {"cityscapes": _cityscapes, "vaihingen": _vaihingen, "monuseg": _monuseg, "tiny": _tiny}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"--preset {name}: unknown preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
