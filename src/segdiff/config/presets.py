"""The named presets: the paper's networks and data (cityscapes, vaihingen, monuseg), the tiny network of the
demo and the tests, and the short-budget recipe on both. Presets are configs, not code paths."""

from __future__ import annotations

import dataclasses

from ..errors import UserError
from .schema import AugmentConfig, DataConfig, DiffusionConfig, ModelConfig, PredictConfig, RunConfig, TrainConfig


def _vaihingen() -> RunConfig:
    return RunConfig(
        preset="vaihingen",
        model=ModelConfig(channel_mult=(1, 1, 1, 2, 2, 4, 4), attention_ds=(16, 32), rrdb_blocks=6, dropout=0.1),
        data=DataConfig(
            size=256,
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
        predict=PredictConfig(mode="resize"),
    )


def _monuseg() -> RunConfig:
    return RunConfig(
        preset="monuseg",
        model=ModelConfig(channel_mult=(1, 1, 1, 2, 2, 4, 4), attention_ds=(16, 32), rrdb_blocks=12),
        data=DataConfig(
            size=256,
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
        predict=PredictConfig(mode="tile"),  # the paper's protocol: 256 x 256 windows with stride 256 at 512
    )


def _cityscapes() -> RunConfig:
    return RunConfig(
        preset="cityscapes",
        model=ModelConfig(channel_mult=(1, 1, 2, 2, 4, 4), attention_ds=(8, 16), rrdb_blocks=15),
        data=DataConfig(size=128, augment=AugmentConfig(scale=(0.75, 1.25), rotate=22.0, hflip=True)),
        train=TrainConfig(batch_size=30, num_workers=4),
        predict=PredictConfig(mode="resize"),
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
        diffusion=DiffusionConfig(steps=100),
        data=DataConfig(size=32, augment=AugmentConfig(hflip=True, vflip=True)),
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
            val_sampling_steps=5,
        ),
        # variance, steps and generations: the cheapest setting within 0.5 IoU points of the paper's 30 x 100
        # on the demo model's validation images (`segdiff study`, docs/results.md)
        predict=PredictConfig(generations=10, sampling_steps=5, variance="small", mode="pad"),
    )


def _fast(cfg: RunConfig, name: str, lr: float, warmup: int, ema_rate: float) -> RunConfig:
    """The short-budget recipe of issue 9 on a preset's network and data: x0-prediction, timestep sampling
    weighted toward high noise, a constant lr after a warm-up (a cosine decay scored lower at equal steps), a
    short EMA; validation only at the end of training (a budget run's steps are fixed up front), on 4 images
    with few steps. Chosen on the MoNuSeg validation images with the tiny network on a CPU (docs/results.md,
    "Recipe for short budgets"). Issue 20 added: x0 as logits trained with the segmentation loss beside the
    MSE (BCE or cross-entropy + soft Dice), and staged training (the first half of the steps one-pass)."""
    train = dataclasses.replace(
        cfg.train,
        lr=lr,
        warmup_steps=warmup,
        ema_rate=ema_rate,
        t_sampling="high_noise",
        val_every=0,
        val_generations=4,
        val_sampling_steps=5,
        val_max_images=4,
        compile="auto",
        seg_loss_weight=1.0,
        onepass_fraction=0.5,
    )
    return dataclasses.replace(
        cfg,
        preset=name,
        model=dataclasses.replace(cfg.model, prediction="x0", x0_output="logits"),
        train=train,
        predict=dataclasses.replace(cfg.predict, generations=4, sampling_steps=5, sampler="ddim"),
    )


def _monuseg_fast() -> RunConfig:
    """The paper's MoNuSeg network trained with the short-budget recipe (its GPU confirmation is pending)."""
    return _fast(_monuseg(), "monuseg-fast", lr=2e-4, warmup=50, ema_rate=0.995)


def _tiny_fast() -> RunConfig:
    return _fast(_tiny(), "tiny-fast", lr=1e-3, warmup=50, ema_rate=0.995)


PRESETS = {
    "cityscapes": _cityscapes,
    "vaihingen": _vaihingen,
    "monuseg": _monuseg,
    "tiny": _tiny,
    "monuseg-fast": _monuseg_fast,
    "tiny-fast": _tiny_fast,
}

# the paper's three data sets (section 4), the presets `segdiff benchmark` measures by default
PAPER_PRESETS = ("vaihingen", "monuseg", "cityscapes")


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"--preset {name}: unknown preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
