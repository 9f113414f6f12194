"""results.json: the test scores, the protocol, the choice of the sampling setting, the training record and the
environment of the SegDiff pipeline, beside the paper's Table 3."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..machine import environment
from .run import Bench, Trained, log
from .selection import GRID_SHARE, Selection, sampling_of

PAPER_TABLE3 = {  # MoNuSeg, Dice (F1) / IoU in percent
    "U-Net": {"dice": 79.43, "iou": 65.99},
    "MedT": {"dice": 79.55, "iou": 66.17},
    "SegDiff (paper)": {"dice": 81.59, "iou": 69.00},
}
PIPELINE_LABEL = (
    "PIPELINE CHECK ONLY (--tiny): tiny preset, reduced protocol on a CPU; not comparable with the paper's Table 3"
)


def test_scores(scores: dict) -> dict:
    return {
        "dice_percent": 100 * scores["f1"],
        "iou_percent": 100 * scores["iou"],
        "dice_pooled_percent": 100 * scores["f1_pooled"],
        "iou_pooled_percent": 100 * scores["iou_pooled"],
        "boundf_percent": 100 * scores["boundf"],
        "wcov_paper_percent": 100 * scores["wcov"],
        "calibration": {k: scores["calibration"][k] for k in ("mean", "stderr", "pooled", "ece")},
        # issue 20: the error AUROC of the uncertainty maps (SegDiff: std over generations) and of the
        # probability's own confidence (all the one-pass baseline has), pooled over the test pixels
        "uncertainty_auroc": (scores.get("uncertainty_auroc") or {}).get("pooled"),
        "confidence_auroc": (scores.get("confidence_auroc") or {}).get("pooled"),
        "n_images": scores["n_images"],
        "averaging": "per-image Dice (F1) and IoU of the foreground, averaged over the test images "
        "(as the paper's tables); pooled: over all test pixels",
        "empty_mask_policy": scores["policy"]["mode"],
    }


def training_record(trained: Trained) -> dict:
    summary, cfg, rows = trained.summary, trained.cfg, trained.rows
    train_rows = [r for r in rows if r.get("kind") == "train"]
    budget_rows = [r for r in rows if r.get("kind") == "budget"]
    waits = [r["data_wait_frac"] for r in train_rows if "data_wait_frac" in r]
    return {
        "preset": cfg.preset,
        "optimizer_steps": summary["step"],
        "seconds": summary["elapsed_s"],
        "minutes_budget": cfg.train.budget_minutes,
        "budget_fix": budget_rows[0] if budget_rows else None,
        "stopped_by": summary["stopped_by"],
        "compile": summary.get("compile"),
        "batch_size": cfg.train.batch_size,
        "prediction": cfg.model.prediction,
        "lr": cfg.train.lr,
        "lr_schedule": cfg.train.lr_schedule,
        "lr_min": cfg.train.lr_min,
        "warmup_steps": cfg.train.warmup_steps,
        "ema_rate": cfg.train.ema_rate,
        "t_sampling": cfg.train.t_sampling,
        "optimizer_steps_per_second": summary["step"] / max(summary["elapsed_s"], 1e-9),
        "data_wait_fraction_mean": float(np.mean(waits)) if waits else None,
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "best_validation": summary["best"],
    }


def segdiff_result(
    bench: Bench, split: dict, trained: Trained, sel: Selection, pred: dict, scores: dict, reference: dict
) -> dict:
    """results.json of the SegDiff pipeline: scores, protocol, selection, training, environment."""
    args, model, device = bench.args, trained.model, bench.device
    opts = model.sampling_options(**sampling_of(sel), seed=args.seed)
    tile = model.config.data.size
    ours = {"dice": 100 * scores["f1"], "iou": 100 * scores["iou"]}
    segdiff_s = time.time() - bench.t_start
    cfg = trained.cfg
    result = {
        "benchmark": "MoNuSeg (issues 3, 9)",
        "label": PIPELINE_LABEL if args.tiny else "MoNuSeg test split, the paper's quadrant protocol",
        "budget_minutes": args.budget_minutes,
        "segdiff_pipeline_minutes": segdiff_s / 60,
        "within_budget": segdiff_s <= bench.budget_s,
        "phases_s": bench.phases.seconds,
        "test": test_scores(scores),
        "reference_global_threshold": reference,
        "selection": {
            "rule": "the cheapest setting of the grid within 0.5 IoU points of the grid's best on the validation "
            "images whose estimated test time fits what is left of the budget "
            "(segdiff.bench.monuseg.selection.choose_setting)",
            "grid": sel.grid,
            "grid_share_of_time_left": GRID_SHARE,
            "validation_scores": sel.rows,
            "skipped": sel.skipped,
            "chosen": sel.chosen,
            "best_val_iou": sel.choice["best_iou"],
            "reason": sel.choice["reason"],
            "validation_images": split["val"],
        },
        "protocol": {
            "preset": model.config.preset + (" (pipeline check)" if args.tiny else ""),
            "test_images": split["test"],
            "test_resolution": sel.test_resolution,
            "test_input": (
                f"central {args.tiny_crop}x{args.tiny_crop} crop of each 512x512 test image"
                if args.tiny
                else "the full 512x512 test image"
            ),
            "window": tile,
            "stride": opts.tile_stride or tile,
            "windows_per_image": sel.windows_per_image,
            "g_per_window": True,
            "generations": sel.chosen["generations"],
            "sampling_steps": sel.chosen["sampling_steps"],
            "T": model.config.diffusion.steps,
            "sampler": opts.sampler,
            "variance": opts.variance,
            "clip_x0": opts.clip_x0,
            "prediction": model.config.model.prediction,
            "amp": "bf16" if device.type == "cuda" else "fp32",
            "seed": args.seed,
            "batch_generations": sel.batch_generations,
            "weights": Path(model.weights_file or "").name,
            "predict_seconds": pred["seconds"],
            "mask": "mean over generations of clamp((x0 + 1) / 2) >= 0.5",
        },
        "training": {
            **training_record(trained),
            "val_every": cfg.train.val_every,
            "validation": f"{len(split['val'])} held-out training images, {cfg.train.val_generations} "
            f"generations x {cfg.train.val_sampling_steps} sampling steps; the better of raw and EMA weights is kept",
            "train_images": split["train"],
            "val_images": split["val"],
            "crop": cfg.data.augment.crop,
            "augmentation": asdict(cfg.data.augment),
            "parameters_M": sum(p.numel() for p in model.net.parameters()) / 1e6,
        },
        "environment": environment(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "files": [
            "results.json",
            "curves.png",
            "figure.png",
            "reliability.png",
            "selection.png",
            "metrics/summary.json",
            "metrics/summary_per_image.csv",
        ],
    }
    if not args.tiny:
        result["paper_table3"] = PAPER_TABLE3
        result["gap_to_paper_segdiff"] = {k: ours[k] - PAPER_TABLE3["SegDiff (paper)"][k] for k in ours}
    log(
        f"{result['label']}: Dice {ours['dice']:.2f} %, IoU {ours['iou']:.2f} % over {scores['n_images']} test "
        f"images; SegDiff pipeline {segdiff_s / 60:.2f} min of {args.budget_minutes:g} -> {bench.out / 'results.json'}"
    )
    return result
