"""What SegDiff is compared with: the best global grey-level threshold (a floor: intensity alone), and phase 6,
the same network trained as a one-pass segmenter for the same training minutes, predicted and evaluated alike."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ...config import RunConfig
from ...data.folder import pair_split
from ...data.io import read_image, read_mask
from ...metrics.baseline import MONUSEG_LEVELS, MONUSEG_THRESHOLDS, best_global_threshold
from .results import test_scores, training_record
from .run import Bench, log, predict_phase, train_phase


def threshold_baseline(view: Path) -> dict:
    """The global grey-level threshold (and polarity) with the best mean IoU on the training images,
    applied to the test images: what a segmentation must beat to have learned more than intensity
    (segdiff.metrics.baseline, its MoNuSeg protocol: grey levels 0..255)."""

    def pairs(split):  # read one image at a time
        return ((read_image(s.image), read_mask(s.mask)) for s in pair_split(view / split))

    best = best_global_threshold(pairs("train"), MONUSEG_THRESHOLDS, MONUSEG_LEVELS, apply_to=pairs("test"))
    return {
        "dice_percent": 100 * float(best.dice.mean()),
        "iou_percent": 100 * float(best.iou.mean()),
        "rule": f"foreground where grey (mean of RGB, 0-255) is {'>=' if best.polarity == 'above' else '<'} "
        f"{best.threshold}",
        "chosen_on": "the training images (best mean IoU)",
    }


def baseline_phase(bench: Bench, cfg: RunConfig, minutes: float) -> dict:
    """The same network trained as a plain one-pass segmenter (x_t = 0, t = 0, sigmoid, BCE + soft Dice) for
    the same training minutes, predicted once per window by the same quadrant protocol, evaluated alike."""
    # the diffusion-only levers of the recipe (issue 20) are off for the one-pass segmenter
    tc = replace(
        cfg.train,
        budget_fixed_at=None,
        val_generations=1,
        val_sampling_steps=1,
        seg_loss_weight=0.0,
        mse_loss_weight=1.0,
        onepass_steps=0,
        onepass_fraction=0.0,
        p_t_max=0.0,
    )
    if tc.budget_minutes is not None:
        tc = replace(tc, budget_minutes=minutes, max_steps=10**9)
    bcfg = replace(
        cfg,
        preset=f"{cfg.preset} as a one-pass segmenter",
        model=replace(cfg.model, prediction="onepass", x0_output="direct", self_condition=False),
        train=tc,
        predict=replace(cfg.predict, start_t=None),
    )
    folder = bench.out / "baseline"
    trained = train_phase(bench, "baseline_train", bcfg, folder / "run")
    _, scores = predict_phase(bench, "baseline_", trained.model, folder, generations=1)
    return {
        "label": f"one-pass segmenter, same network, {trained.summary['elapsed_s'] / 60:.2f} training minutes",
        "test": test_scores(scores),
        "training": training_record(trained),
        "protocol": "one forward per 256 x 256 window (x_t = 0, t = 0), mask = sigmoid >= 0.5"
        if not bench.args.tiny
        else "one forward per window (x_t = 0, t = 0), mask = sigmoid >= 0.5",
    }


def add_baseline(result: dict, base: dict) -> None:
    ours, bt = result["test"], base["test"]
    result["one_pass_baseline"] = base
    result["segdiff_minus_one_pass"] = {
        "dice": ours["dice_percent"] - bt["dice_percent"],
        "iou": ours["iou_percent"] - bt["iou_percent"],
    }
    log(
        f"one-pass baseline ({base['label']}): Dice {bt['dice_percent']:.2f} %, IoU {bt['iou_percent']:.2f} %; "
        f"SegDiff {'beats' if ours['iou_percent'] > bt['iou_percent'] else 'does NOT beat'} it "
        f"({result['segdiff_minus_one_pass']['iou']:+.2f} IoU points)"
    )
