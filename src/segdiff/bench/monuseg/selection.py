"""Phase 3, the sampling setting: the batch of generations that fits the device (segdiff.memory's estimate,
the same check prediction makes), the grid of samplers x sampling steps x generations run on the validation
images, the rule that chooses from it (issue 9), and its figure (selection.png)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...api import SegDiff
from ...devices import synchronize
from ...memory import check_prediction
from ...metrics.overlap import confusion, f1_from_confusion, iou_from_confusion
from ...predict.tiling import windows
from .run import Bench, log
from .view import load_split

# the validation grid: samplers x sampling steps x generations (issue 9)
GRID = {"samplers": ("ddim", "ddpm"), "sampling_steps": (1, 2, 5, 10, 25), "generations": (1, 2, 4, 8, 16)}
TINY_GRID = {"samplers": ("ddim", "ddpm"), "sampling_steps": (1, 2, 5, 10), "generations": (1, 2, 4, 8)}
GRID_SHARE = 0.5  # of the time left after training, at most this much for the validation grid

IOU_TOLERANCE_POINTS = 0.5  # IoU in percent points


def choose_setting(rows: list[dict], budget_s: float, tolerance: float = IOU_TOLERANCE_POINTS) -> dict:
    """rows: one dict per grid setting with "iou" (validation IoU, percent) and "cost_s" (estimated seconds
    to predict the test split with it), plus the setting's own fields.

    Rule: best = the highest validation IoU of the whole grid. Among the settings whose cost fits budget_s,
    those within `tolerance` points of best are candidates, and the cheapest candidate is chosen (ties: the
    higher IoU). If no fitting setting is within tolerance, the fitting setting with the highest IoU is
    chosen; if none fits, the cheapest setting of the grid. Returns {"row", "best_iou", "reason"}.
    """
    if not rows:
        raise ValueError("the grid is empty")
    best = max(r["iou"] for r in rows)
    fits = [r for r in rows if r["cost_s"] <= budget_s]
    near = [r for r in fits if r["iou"] >= best - tolerance]
    if near:
        row = min(near, key=lambda r: (r["cost_s"], -r["iou"]))
        reason = (
            f"the cheapest setting within {tolerance:g} IoU points of the grid's best ({best:.2f}) that fits "
            f"{budget_s:.0f} s"
        )
    elif fits:
        row = max(fits, key=lambda r: (r["iou"], -r["cost_s"]))
        reason = (
            f"no setting within {tolerance:g} points of the best ({best:.2f}) fits {budget_s:.0f} s: the best that fits"
        )
    else:
        row = min(rows, key=lambda r: (r["cost_s"], -r["iou"]))
        reason = f"nothing fits {budget_s:.0f} s: the cheapest setting of the grid"
    return {"row": row, "best_iou": best, "reason": reason}


def scores_of(pred_masks: list[np.ndarray], gts: list[np.ndarray]) -> tuple[float, float]:
    cs = [confusion(p, g) for p, g in zip(pred_masks, gts)]
    return 100 * float(np.mean([iou_from_confusion(c) for c in cs])), 100 * float(
        np.mean([f1_from_confusion(c) for c in cs])
    )


def validation_grid(
    model: SegDiff, val: list, grid: dict, n_test: int, seconds: float, batch_generations: int, seed: int
) -> tuple[list[dict], float, list[dict]]:
    """Every (sampler, sampling_steps) of `grid`, cheapest first, run once on the validation images with the largest
    number of generations; the scores of n generations use the mean of the first n (the noise of generation
    k is keyed by k, so they are exactly what an n-generation run draws). A (sampler, sampling_steps) is skipped when
    the time measured so far says it would not finish within `seconds`. cost_s: the estimated seconds to
    predict the n_test test images with that setting (val seconds x n / G x n_test / n_val).
    Returns (rows, seconds spent, skipped)."""
    G = max(grid["generations"])
    gts = [m for _, _, m in val]
    rows, skipped, spent, per_sampling_step = [], [], 0.0, None
    for k in sorted(grid["sampling_steps"]):
        for s in grid["samplers"]:
            if k == 1 and s != grid["samplers"][0]:
                continue  # one step: every sampler returns the network's x0 at t = T (the same numbers)
            if per_sampling_step is not None and spent + per_sampling_step * k > seconds:
                skipped.append({"sampler": s, "sampling_steps": k, "estimate_s": per_sampling_step * k})
                continue
            opts = model.sampling_options(
                generations=G, sampling_steps=k, sampler=s, seed=seed, batch_generations=batch_generations
            )
            synchronize(model.device)
            t0 = time.perf_counter()
            x0 = [model.predict_x0(image[None], [stem], opts)[0].float().cpu() for stem, image, _ in val]
            synchronize(model.device)
            dt = time.perf_counter() - t0
            spent += dt
            per_sampling_step = max(per_sampling_step or 0.0, dt / k)
            for g in sorted(grid["generations"]):
                masks = [(((x[:g] + 1) / 2).clamp(0, 1).mean(0) >= 0.5).numpy() for x in x0]
                iou, dice = scores_of(masks, gts)
                rows.append(
                    {
                        "sampler": s,
                        "sampling_steps": k,
                        "generations": g,
                        "iou": iou,
                        "dice": dice,
                        "val_seconds": dt * g / G,
                        "cost_s": dt * g / G * n_test / len(val),
                    }
                )
            best_k = max(r["iou"] for r in rows if r["sampling_steps"] == k and r["sampler"] == s)
            log(f"validation grid: {s} {k} sampling steps: best IoU {best_k:.2f} ({dt:.1f} s for {G} generations)")
    return rows, spent, skipped


def grid_figure(path: Path, rows: list[dict], chosen: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in sorted({r["sampler"] for r in rows}):
        for k in sorted({r["sampling_steps"] for r in rows if r["sampler"] == s}):
            rr = [r for r in rows if r["sampler"] == s and r["sampling_steps"] == k]
            ax.plot([r["cost_s"] for r in rr], [r["iou"] for r in rr], marker="o", label=f"{s} {k} steps")
    ax.scatter([chosen["cost_s"]], [chosen["iou"]], s=200, facecolors="none", edgecolors="k", label="chosen")
    ax.set_xscale("log")
    ax.set_xlabel("estimated seconds to predict the test split (points: 1, 2, 4, ... generations)")
    ax.set_ylabel("validation IoU %")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass
class Selection:
    """The sampling setting for the test split, and how it was chosen."""

    chosen: dict  # sampler, sampling_steps, generations (and, from the grid, its validation scores)
    choice: dict  # choose_setting's answer: row, best_iou, reason
    grid: dict | None  # None: fixed by --generations/--steps
    rows: list[dict]
    skipped: list[dict]
    batch_generations: int
    windows_per_image: int
    test_resolution: list[int]


def select_phase(bench: Bench, model: SegDiff, split: dict) -> Selection:
    """The batch of generations that fits the device, then the sampling setting: fixed by --generations and
    --steps, else chosen on the validation images from the grid within GRID_SHARE of the time left."""
    args, device = bench.args, bench.device
    tile = model.config.data.size
    val = load_split(bench.view / "val")
    image0 = val[0][1][None].to(device)
    h, w = image0.shape[-2:]
    n_windows = len(windows(h, w, tile, model.config.predict.tile_stride or tile))
    grid = TINY_GRID if args.tiny else GRID
    g_max = args.generations or max(grid["generations"])
    want_bg = args.batch_generations or (n_windows * g_max if device.type == "cuda" else 32)
    # the batch that fits the device by segdiff.memory's estimate: the check (and the lowering, with a warning)
    # that every prediction below makes too
    opts = model.sampling_options(generations=g_max, batch_generations=want_bg)
    shape = (int(h), int(w))
    per_batch = check_prediction(
        model.config, opts, shape, device, lambda o: model.predictor.network_batch(shape, 1, o)
    ).batch_generations
    if args.generations:
        chosen = {
            "sampler": args.sampler or model.config.predict.sampler,
            "sampling_steps": args.steps,
            "generations": args.generations,
        }
        choice = {"reason": "fixed by --generations/--steps (no validation grid)", "row": chosen, "best_iou": None}
        selection = Selection(chosen, choice, None, [], [], per_batch, n_windows, [int(h), int(w)])
    else:
        rows, _, skipped = bench.phases.run(
            "select",
            validation_grid,
            model,
            val,
            grid,
            len(split["test"]),
            GRID_SHARE * bench.seconds_left(),
            per_batch,
            args.seed,
        )
        choice = choose_setting(rows, bench.seconds_left())
        grid_figure(bench.out / "selection.png", rows, choice["row"])
        selection = Selection(choice["row"], choice, grid, rows, skipped, per_batch, n_windows, [int(h), int(w)])
    log(f"sampling setting: {selection.chosen} ({choice['reason']})")
    return selection


# phases 4 and 5


def sampling_of(selection: Selection) -> dict:
    """predict_folder's sampling overrides for the chosen setting."""
    c = selection.chosen
    return {
        "generations": c["generations"],
        "steps": c["sampling_steps"],
        "sampler": c["sampler"],
        "batch_generations": selection.batch_generations,
    }
