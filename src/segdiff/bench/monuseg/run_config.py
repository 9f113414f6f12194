"""Phase 2, training: the run config of the benchmark (a preset with its training turned into a time budget)
and the SegDiff training phase."""

from __future__ import annotations

from dataclasses import replace

from ...config import RunConfig, preset
from ...train.logging import plot_curves
from .run import Bench, Trained, log, train_phase


def make_config(args, train_minutes: float) -> RunConfig:
    """The preset (default monuseg-fast; --tiny: tiny-fast at 32 x 32 with the monuseg augmentation) with
    its training turned into a time budget: `train_minutes` -> a fixed max_steps (TrainConfig.budget_minutes)."""
    cfg = preset(args.preset)
    tc = cfg.train
    if args.tiny:
        mon = preset("monuseg").data.augment
        size = 32
        # the paper's MoNuSeg augmentation at the tiny window size; tile = stride = 32 on 64 x 64 test crops
        cfg = replace(
            cfg,
            data=replace(cfg.data, size=size, augment=replace(mon, crop=size)),
            predict=replace(cfg.predict, mode="tile", tile_stride=None),
        )
    else:
        tc = replace(tc, num_workers=args.num_workers)
    # debugging (--max-steps): a fixed number of steps instead of the budget
    steps, budget = (args.max_steps, None) if args.max_steps else (10**9, train_minutes)
    tc = replace(
        tc,
        batch_size=args.batch_size or tc.batch_size,
        max_steps=steps,
        budget_minutes=budget,
        val_every=args.val_every,
        val_max_images=None,
        # the validation at the end of training only picks raw or EMA weights (the grid below chooses the sampling)
        val_generations=2,
        val_sampling_steps=min(tc.val_sampling_steps or 10, 10),
        save_every=0,  # weights are written once at the end (and best.safetensors at each better validation)
        seed=args.seed,
        compile=args.compile or tc.compile,
    )
    return replace(cfg, train=tc)


def segdiff_train_phase(bench: Bench) -> Trained:
    """SegDiff for --train-minutes (the budget is turned into a fixed number of steps after the first steps)."""
    trained = train_phase(bench, "train", make_config(bench.args, bench.args.train_minutes), bench.out / "run")
    plot_curves(trained.rows, bench.out / "curves.png")
    s = trained.summary
    log(f"trained {s['step']} steps in {s['elapsed_s'] / 60:.2f} min ({s['stopped_by']}); best validation {s['best']}")
    return trained
