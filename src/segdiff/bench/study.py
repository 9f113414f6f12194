"""`segdiff study`: segmentation quality against sampling cost (the paper's Figs. 4, 5, 6 and 9).

For every sampler (DDPM with the large or small variance, DDIM, DPM-Solver++) and every number of
sampling steps K of the grid, each image is sampled once with `generations` generations (the noise of
generation k is keyed by k, so the first n of 30 samples are exactly what an n-generation run draws).
From that one set of samples:

* metric vs generations: the probability map of n generations is the mean of the first n samples
  (n = 1..generations); its mask is probability >= 0.5 (as `predict`);
* metric vs steps: the same at n = generations;
* per image: foreground IoU and F1 (the paper's per-image mIoU / F1, averaged over images) and the
  paper's calibration score (mean over images, with its standard error, Fig. 6);
* seconds per image: wall time of the `generations`-generation run at K steps (CUDA synchronised).

Outputs in --out: study.csv (one row per sampler x steps x generations), study_per_image.csv,
study.json (protocol, environment, rows, recommendation) and the plots fig4_iou_vs_steps.png,
fig5_iou_vs_generations.png, fig6_calibration_vs_generations.png, fig9_time_vs_steps.png.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..devices import synchronize
from ..errors import UserError

DEFAULT_STEPS = (5, 10, 25, 50, 100)
DEFAULT_SAMPLERS = ("ddpm-large", "ddpm-small", "ddim", "dpm++")
IOU_TOLERANCE = 0.005  # "within 0.5 IoU points" of the full protocol


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # as given on the command line
    sampler: str  # ddpm | ddim | dpm++
    variance: str = "large"
    eta: float = 0.0


def parse_sampler(name: str) -> SamplerSpec:
    """ddpm-large, ddpm-small (or ddpm = ddpm-large), ddim, ddim-eta<x>, dpm++."""
    if name in ("ddpm", "ddpm-large"):
        return SamplerSpec(name, "ddpm", "large")
    if name == "ddpm-small":
        return SamplerSpec(name, "ddpm", "small")
    if name == "ddim":
        return SamplerSpec(name, "ddim")
    if name.startswith("ddim-eta"):
        try:
            return SamplerSpec(name, "ddim", eta=float(name[len("ddim-eta") :]))
        except ValueError:
            pass
    if name in ("dpm++", "dpmpp"):
        return SamplerSpec(name, "dpm++")
    raise UserError(f"--samplers {name}: unknown; use ddpm-large, ddpm-small, ddim, ddim-eta<x> or dpm++")


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} {text!r}: expected comma-separated integers such as 5,10,25") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} {text!r}: expected positive integers")
    return sorted(set(values))


def first_n_means(p: np.ndarray) -> np.ndarray:
    """[G, H, W] per-generation maps -> [G, H, W] whose entry n - 1 is the mean of the first n maps."""
    c = np.cumsum(p.astype(np.float64), axis=0)
    return (c / np.arange(1, p.shape[0] + 1, dtype=np.float64)[:, None, None]).astype(np.float32)


def run_study(
    model,
    data: str | Path,
    out: str | Path,
    images: int | None = None,
    generations: int = 30,
    steps: list[int] | None = None,
    samplers: list[str] | None = None,
    seed: int = 0,
    batch_generations: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the study of `model` (a SegDiff) on the split folder `data` (images/ and masks/)."""
    from ..data.dataset import load_pair
    from ..data.folder import pair_split
    from .machine import environment

    out = Path(out)
    if model.config.model.mask_channels > 1:
        raise UserError("segdiff study: binary models only (this run has several classes)")
    T = len(model.schedule)
    if steps is None:
        steps = sorted({k for k in DEFAULT_STEPS if k <= T} | {T})
    if max(steps) > T:
        raise UserError(f"--steps {max(steps)}: this model has T = {T} diffusion steps; use values up to {T}")
    specs = [parse_sampler(s) for s in (samplers or DEFAULT_SAMPLERS)]
    if len({s.name for s in specs}) != len(specs):
        raise UserError("--samplers: a sampler is listed twice")
    if generations < 1:
        raise UserError(f"--generations {generations}: must be at least 1")
    samples = pair_split(Path(data))
    samples = samples[:images] if images else samples
    out.mkdir(parents=True, exist_ok=True)
    device = model.device

    pairs = [(s.stem, *load_pair(s, channels=model.config.model.image_channels)) for s in samples]
    combos = [(spec, k) for spec in specs for k in steps]
    # compile="auto": decided once for the whole grid (every image at every sampler and number of steps)
    grid = model.sampling_options(generations=generations, sampling_steps=1, batch_generations=batch_generations)
    compile_mode = model.resolve_compile(grid, [tuple(im.shape[-2:]) for _, im, _ in pairs], sum(steps) * len(specs))
    compile_reason = model.compile_decision.reason

    def opts_for(spec: SamplerSpec, k: int):
        return model.sampling_options(
            generations=generations,
            sampling_steps=k,
            sampler=spec.sampler,
            variance=spec.variance if spec.sampler == "ddpm" else None,  # each sampler gets only its options
            eta=spec.eta if spec.sampler == "ddim" else None,
            seed=seed,
            batch_generations=batch_generations,
            compile=compile_mode.compile,
        )

    # warm-up (allocator, cuDNN autotuning, compilation): one untimed run at the smallest grid point
    model.predict_x0(pairs[0][1][None], [pairs[0][0]], opts_for(specs[0], min(steps)))
    acc, seconds, per_image = _sample_grid(model, pairs, combos, opts_for, generations, progress)
    rows = _summary_rows(acc, seconds, combos, generations, len(pairs))

    csv_path, img_csv = out / "study.csv", out / "study_per_image.csv"
    _write_csv(csv_path, rows)
    _write_csv(img_csv, per_image)
    rec = recommend(rows, T, generations)
    plots = plot_study(rows, out, generations)
    report = {
        "protocol": {
            "data": str(data),
            "images": [s for s, _, _ in pairs],
            "generations": generations,
            "steps": steps,
            "samplers": [vars(s) for s in specs],
            "seed": seed,
            "T": T,
            "schedule": model.config.diffusion.schedule,
            "clip_x0": opts_for(specs[0], steps[0]).clip_x0,
            "predict_mode": opts_for(specs[0], steps[0]).mode,
            "size": model.config.data.size,
            "batch_generations": opts_for(specs[0], steps[0]).batch_generations,
            "amp": opts_for(specs[0], steps[0]).amp,
            "compile": compile_mode.compile,
            "compile_reason": compile_reason,
            "mask": "probability >= 0.5",
            "seconds_per_image": f"wall time of one {generations}-generation run per image (CUDA synchronised), "
            "mean over images; the same for every n of a (sampler, steps) pair",
        },
        "environment": environment(device),
        "weights": str(model.weights_file or ""),
        "recommendation": rec,
        "rows": rows,
        "files": {"csv": str(csv_path), "per_image_csv": str(img_csv), "plots": [str(p) for p in plots]},
    }
    atomic_write_text(out / "study.json", json.dumps(report, indent=2) + "\n")
    return report


def _sample_grid(model, pairs: list, combos: list, opts_for, generations: int, progress: bool):
    """Every image sampled once per (sampler, sampling steps) with all generations, timed (device
    synchronised); scored at n = 1..generations (the mean of the first n samples). Returns the per-(sampler,
    sampling steps, n) accumulators, the seconds per (sampler, sampling steps) and the per-image rows."""
    from tqdm import tqdm

    from ..metrics import CalibrationAccumulator, calibration_score, f1, iou
    from ..predict.ensemble import summarise

    per_image: list[dict] = []
    acc: dict[tuple[str, int, int], dict] = {}
    seconds: dict[tuple[str, int], list[float]] = {}
    bar = tqdm(total=len(combos) * len(pairs), disable=not progress, desc="study", unit="run")
    for spec, k in combos:
        opts = opts_for(spec, k)
        for stem, image, mask in pairs:
            gt = mask[0].numpy() > 0.5
            synchronize(model.device)
            t0 = time.perf_counter()
            x0 = model.predict_x0(image[None], [stem], opts)
            synchronize(model.device)
            dt = time.perf_counter() - t0
            seconds.setdefault((spec.name, k), []).append(dt)
            p = summarise(x0)["samples"][0].cpu().numpy()  # [G, H, W] in [0, 1]
            probs = first_n_means(p)
            for n in range(1, generations + 1):
                prob = np.clip(probs[n - 1], 0.0, 1.0)
                pred = prob >= 0.5
                a = acc.setdefault((spec.name, k, n), {"iou": [], "f1": [], "calib": CalibrationAccumulator()})
                row = {
                    "image": stem,
                    "sampler": spec.name,
                    "steps": k,
                    "generations": n,
                    "iou": iou(pred, gt),
                    "f1": f1(pred, gt),
                    "calibration": calibration_score(prob, gt),
                    "seconds": dt,
                }
                a["iou"].append(row["iou"])
                a["f1"].append(row["f1"])
                a["calib"].add(prob, gt)
                per_image.append(row)
            bar.update(1)
    bar.close()
    return acc, seconds, per_image


def _summary_rows(acc: dict, seconds: dict, combos: list, generations: int, n_images: int) -> list[dict]:
    """One row of study.csv per sampler x sampling steps x generations: means over the images."""
    rows = []
    for spec, k in combos:
        for n in range(1, generations + 1):
            a = acc[(spec.name, k, n)]
            cal = a["calib"].summary()
            rows.append(
                {
                    "sampler": spec.name,
                    "method": spec.sampler,
                    "variance": spec.variance if spec.sampler == "ddpm" else "",
                    "eta": spec.eta if spec.sampler == "ddim" else "",
                    "steps": k,
                    "generations": n,
                    "images": n_images,
                    "iou": float(np.mean(a["iou"])),
                    "iou_std": float(np.std(a["iou"])),
                    "f1": float(np.mean(a["f1"])),
                    "f1_std": float(np.std(a["f1"])),
                    "calibration": cal["mean"],
                    "calibration_stderr": cal["stderr"],
                    "calibration_pooled": cal["pooled"],
                    "ece": cal["ece"],
                    "seconds_per_image": float(np.mean(seconds[(spec.name, k)])),
                    "steps_x_generations": k * n,
                }
            )
    return rows


def recommend(rows: list[dict], T: int, generations: int) -> dict | None:
    """The cheapest (steps x generations, then seconds) setting within 0.5 IoU points of the full protocol
    (ddpm-large or ddpm, T steps, all generations), if that protocol is in the grid."""
    base = next(
        (
            r
            for r in rows
            if r["sampler"] in ("ddpm-large", "ddpm") and r["steps"] == T and r["generations"] == generations
        ),
        None,
    )
    if base is None:
        return None
    ok = [r for r in rows if r["iou"] >= base["iou"] - IOU_TOLERANCE]
    best = min(ok, key=lambda r: (r["steps_x_generations"], r["seconds_per_image"]))
    keep = ("sampler", "steps", "generations", "iou", "f1", "calibration")
    return {
        "rule": f"cheapest steps x generations with IoU >= full-protocol IoU - {IOU_TOLERANCE}",
        "full_protocol": {**{k: base[k] for k in keep}, "seconds_per_image": base["seconds_per_image"]},
        "choice": {
            **{k: best[k] for k in keep},
            # time is measured per (sampler, steps) for all generations; fewer generations cost less
            f"seconds_per_image_at_{generations}_generations": best["seconds_per_image"],
        },
        "images": base["images"],
    }


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _figure(ncols: int, width: float = 4.2, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def plot_study(rows: list[dict], out: Path, generations: int) -> list[Path]:
    """The paper's Figs. 4, 5, 6 and 9 from the study rows; returns the PNG paths."""
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    at_g = [r for r in rows if r["generations"] == generations]
    n_img = rows[0]["images"]
    paths = []

    def series(sampler, key, rs):
        pts = sorted((r["steps"], r[key]) for r in rs if r["sampler"] == sampler)
        return [p[0] for p in pts], np.array([p[1] for p in pts])

    # Fig. 4: IoU (mean and spread over images) and F1 vs steps, at all generations
    fig, (ax, ax_f1) = _figure(2)
    for s in samplers:
        x, m = series(s, "iou", at_g)
        _, sd = series(s, "iou_std", at_g)
        ax.plot(x, m, "o-", label=s)
        ax.fill_between(x, m - sd, m + sd, alpha=0.15)
        x, m = series(s, "f1", at_g)
        ax_f1.plot(x, m, "o-", label=s)
    for a, name in ((ax, "IoU (mean, ±1 std over images)"), (ax_f1, "F1")):
        a.set_xlabel("sampling steps")
        a.set_ylabel(name)
        a.set_xscale("log")
        a.set_xticks(steps, [str(k) for k in steps])
        a.set_xticks([], minor=True)
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"Quality vs sampling steps ({generations} generations, {n_img} images)", fontsize=10)
    fig.tight_layout()
    paths.append(out / "fig4_iou_vs_steps.png")
    fig.savefig(paths[-1])

    # Fig. 5 and 6: IoU and calibration vs generations, one panel per sampler, one line per steps
    for fname, key, err, ylabel in (
        ("fig5_iou_vs_generations.png", "iou", None, "IoU"),
        (
            "fig6_calibration_vs_generations.png",
            "calibration",
            "calibration_stderr",
            "calibration score (lower is better)",
        ),
    ):
        fig, axes = _figure(len(samplers))
        for ax, s in zip(axes, samplers):
            for k in steps:
                rs = sorted((r for r in rows if r["sampler"] == s and r["steps"] == k), key=lambda r: r["generations"])
                n = [r["generations"] for r in rs]
                y = np.array([r[key] for r in rs])
                if err:
                    ax.errorbar(n, y, yerr=[r[err] for r in rs], fmt="o-", ms=3, capsize=2, label=f"{k} steps")
                else:
                    ax.plot(n, y, "o-", ms=3, label=f"{k} steps")
            ax.set_title(s, fontsize=10)
            ax.set_xlabel("generations averaged")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / fname)
        fig.savefig(paths[-1])

    # Fig. 9: (a) IoU vs steps, (b) seconds per image vs steps
    fig, (ax, ax_t) = _figure(2)
    for s in samplers:
        x, m = series(s, "iou", at_g)
        ax.plot(x, m, "o-", label=s)
        x, t = series(s, "seconds_per_image", at_g)
        ax_t.plot(x, t, "o-", label=s)
    ax.set_ylabel("IoU")
    ax_t.set_ylabel(f"seconds per image ({generations} generations)")
    for a in (ax, ax_t):
        a.set_xlabel("sampling steps")
        a.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("(a) IoU and (b) time per number of sampling steps", fontsize=10)
    fig.tight_layout()
    paths.append(out / "fig9_time_vs_steps.png")
    fig.savefig(paths[-1])
    return paths


def format_summary(report: dict) -> str:
    rows = report["rows"]
    G = report["protocol"]["generations"]
    lines = [f"{'sampler':<12}{'steps':>6}{'IoU':>8}{'F1':>8}{'calib':>9}{'s/image':>9}  (at {G} generations)"]
    for r in rows:
        if r["generations"] == G:
            lines.append(
                f"{r['sampler']:<12}{r['steps']:>6}{r['iou']:>8.4f}{r['f1']:>8.4f}"
                f"{r['calibration']:>9.4f}{r['seconds_per_image']:>9.3f}"
            )
    rec = report["recommendation"]
    if rec:
        c, b = rec["choice"], rec["full_protocol"]
        lines.append(
            f"full protocol ({b['sampler']}, {b['steps']} steps x {b['generations']} generations): IoU {b['iou']:.4f},"
            f" {b['seconds_per_image']:.3f} s/image; cheapest within {100 * IOU_TOLERANCE:.1f} IoU points: "
            f"{c['sampler']}, {c['steps']} steps x {c['generations']} generations, IoU {c['iou']:.4f}"
            f" ({rec['images']} images)"
        )
    return "\n".join(lines)


def cli(args) -> int:
    """`segdiff study` (arguments from segdiff.bench.add_parsers)."""
    from ..api import SegDiff

    model = SegDiff.load(args.checkpoint, weights=args.weights, device=args.device)
    steps = parse_int_list(args.steps, "--steps") if args.steps else None
    samplers = [v.strip() for v in args.samplers.split(",") if v.strip()]
    report = run_study(
        model,
        args.data,
        args.out,
        images=args.images,
        generations=args.generations,
        steps=steps,
        samplers=samplers,
        seed=args.seed,
        batch_generations=args.batch_generations,
        progress=not args.quiet,
    )
    print(format_summary(report))
    print(f"study: {args.out}/study.csv, study.json and plots")
    return 0
