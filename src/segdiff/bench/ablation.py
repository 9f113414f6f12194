"""`segdiff ablation`: the paper's ablation study (section 5: Table 4, Fig. 7) and its sensitivity study
(Fig. 8: RRDB blocks, Fig. 9: diffusion steps T), rerun on any data with one command.

Every chosen variant is the preset (with --set overrides) plus the variant's model settings
(`VARIANTS`, model/fusion.py), trained with the same seed, the same steps (or time budget) and the same
data; its weights (best on validation, else EMA) then predict the chosen split with the paper's ablation
protocol, nine generations averaged (the preset's sampler and chain length unless --sampling-steps), and
`segdiff evaluate` scores the masks. OUT holds:

    OUT/ablation.json                 the protocol (checked on a rerun) and every finished variant's row
    OUT/variants/<name>/run/          its run folder (segdiff train)
    OUT/variants/<name>/pred/         its prediction (segdiff predict) and metrics.json (segdiff evaluate)
    OUT/variants/<name>/result.json   written last: the variant is finished
    OUT/table4.md, OUT/table4.csv     variant, IoU, F1, WCov, FBound (percent), as the paper's Table 4
    OUT/fig7_variants.png             input, each variant's probability map (jet, 0 blue, 1 red), truth
    OUT/fig8_rrdb.png, fig9_T.png     for an RRDB or T sweep: IoU against the swept value (and seconds)

A run interrupted part-way continues where it stopped: finished variants (result.json) are kept, a
variant whose run folder has a checkpoint resumes training, and prediction skips images already written.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..atomic import atomic_write_text
from ..config import RunConfig, apply_overrides, parse_assignments, preset
from ..errors import UserError

GENERATIONS = 9  # the paper's ablation averages nine generations (section 5)


@dataclass(frozen=True)
class Variant:
    name: str  # on the command line and in file names
    label: str  # as the paper's Table 4 names it
    overrides: tuple[tuple[str, str], ...]  # dotted config keys and their values (text, as --set)
    sweep: tuple[str, int] | None = None  # ("rrdb", 3) or ("T", 50) for a sensitivity sweep


VARIANTS = {
    v.name: v
    for v in (
        Variant("full", "Full method", ()),
        Variant("concat", "Variant one", (("model.conditioning", "concat"),)),
        Variant("hardnet", "Variant two", (("model.encoder", "hardnet"),)),
        Variant("no-encoder", "Variant three", (("model.conditioning", "image"),)),
        Variant("inject1", "Variant four", (("model.conditioning", "inject"), ("model.inject_after", "1"))),
        Variant("inject3", "Variant five", (("model.conditioning", "inject"), ("model.inject_after", "3"))),
        Variant("inject5", "Variant six", (("model.conditioning", "inject"), ("model.inject_after", "5"))),
    )
}
PAPER_ORDER = ("concat", "hardnet", "no-encoder", "inject1", "inject3", "inject5", "full")

# The paper's Table 4 (percent): F1, IoU, WCov, FBound per dataset and variant.
PAPER_TABLE4 = {
    "vaihingen": {
        "concat": (91.60, 85.45, 88.67, 71.70),
        "hardnet": (90.92, 84.00, 89.67, 70.00),
        "no-encoder": (93.77, 88.67, 91.69, 80.15),
        "inject1": (94.77, 90.27, 93.82, 82.64),
        "inject3": (93.16, 87.76, 91.08, 79.89),
        "inject5": (91.97, 85.57, 89.83, 71.04),
        "full": (94.95, 90.64, 94.00, 84.37),
    },
    "cityscapes-bus": {
        "concat": (90.52, 84.15, 90.37, 62.66),
        "hardnet": (85.21, 75.92, 81.15, 38.81),
        "no-encoder": (90.35, 83.76, 88.56, 58.80),
        "inject1": (91.30, 85.17, 90.34, 63.85),
        "inject3": (89.57, 82.73, 88.87, 58.40),
        "inject5": (82.97, 72.66, 80.85, 34.38),
        "full": (90.72, 84.35, 89.96, 63.87),
    },
}
COLUMNS = ("variant", "label", "iou", "f1", "wcov", "boundf")


def parse_variants(names: str | None, rrdb: str | None = None, steps_T: str | None = None) -> list[Variant]:
    """--variants (comma-separated names of VARIANTS, or "all"), --rrdb 1,3,5 and --T 25,50 (sweeps)."""
    chosen: list[Variant] = []
    for name in [n.strip() for n in (names or "").split(",") if n.strip()]:
        if name == "all":
            chosen += [VARIANTS[n] for n in PAPER_ORDER]
        elif name in VARIANTS:
            chosen.append(VARIANTS[name])
        else:
            raise UserError(f"--variants {name}: unknown; choose from {', '.join(VARIANTS)} or all")
    for flag, text, key, tag in (
        ("--rrdb", rrdb, "model.rrdb_blocks", "rrdb"),
        ("--T", steps_T, "diffusion.steps", "T"),
    ):
        for value in _ints(text, flag):
            chosen.append(Variant(f"{tag}{value}", f"{tag} = {value}", ((key, str(value)),), (tag, value)))
    names_seen = [v.name for v in chosen]
    if not chosen:
        raise UserError("choose at least one variant: --variants full,concat,... and/or --rrdb / --T sweeps")
    if len(set(names_seen)) != len(names_seen):
        raise UserError(f"a variant is listed twice: {', '.join(names_seen)}")
    return chosen


def _ints(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers such as 1,3,5") from None
    if min(values, default=1) < 1:
        raise UserError(f"{flag} {text!r}: expected positive integers")
    return values


def base_config(preset_name: str, sets: list[str], steps: int | None, minutes: float | None, seed: int) -> RunConfig:
    """The preset with --set overrides, the run length (steps or a time budget) and the seed, shared by
    every variant."""
    if (steps is None) == (minutes is None):
        raise UserError("give exactly one of --steps N (optimizer steps per variant) or --minutes M (per variant)")
    cfg = apply_overrides(preset(preset_name), parse_assignments(sets), text=True)
    train = replace(cfg.train, seed=seed)
    if steps is not None:
        train = replace(train, max_steps=steps, budget_minutes=None)
    else:
        train = replace(train, budget_minutes=minutes)
    return replace(cfg, train=train)


def variant_config(base: RunConfig, variant: Variant) -> RunConfig:
    """`base` with the variant's settings, validated (a ConfigError names the key, e.g. inject5 on a network
    with fewer than five downsampling blocks)."""
    cfg = apply_overrides(base, dict(variant.overrides), text=True)
    if variant.sweep and variant.sweep[0] == "T":
        # a shorter T also bounds the chain; keep the preset's chain length where it fits
        k = cfg.predict.sampling_steps
        if k is not None and k > cfg.diffusion.steps:
            cfg = replace(cfg, predict=replace(cfg.predict, sampling_steps=None))
    return cfg.validate()


def run_ablation(
    data: str | Path,
    out: str | Path,
    preset_name: str,
    variants: list[Variant],
    steps: int | None = None,
    minutes: float | None = None,
    split: str = "test",
    sets: list[str] | None = None,
    seed: int = 0,
    generations: int = GENERATIONS,
    sampling_steps: int | None = None,
    weights: str = "best",
    figure_images: int = 4,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Train, predict and score every variant (those finished by an earlier call on `out` are kept), then
    write the table, the figure and the sweep plots. Returns the report (as ablation.json)."""
    from ..data.folder import pair_split
    from ..devices import default_device
    from .machine import environment

    data, out = Path(data), Path(out)
    split_dir = data / split
    if not (split_dir / "images").is_dir():
        raise UserError(f"{split_dir}: no images/ folder; --split names a folder of --data with images/ and masks/")
    samples = pair_split(split_dir)
    base = base_config(preset_name, sets or [], steps, minutes, seed)
    configs = {v.name: variant_config(base, v) for v in variants}  # every error before any work
    for cfg in configs.values():
        cfg.predict.override({"generations": generations, "steps": sampling_steps}, cfg.diffusion.steps, cfg.data.size)
    protocol = {
        "data": str(data.resolve()),
        "split": split,
        "preset": preset_name,
        "set": list(sets or []),
        "steps": steps,
        "minutes": minutes,
        "seed": seed,
        "generations": generations,
        "sampling_steps": sampling_steps,
        "weights": weights,
    }
    report_path = out / "ablation.json"
    if report_path.is_file():
        earlier = json.loads(report_path.read_text())["protocol"]
        if earlier != protocol:
            diff = ", ".join(f"{k}: {earlier.get(k)!r} -> {v!r}" for k, v in protocol.items() if earlier.get(k) != v)
            raise UserError(f"{out}: holds an ablation run with another protocol ({diff}); use another --out")
    out.mkdir(parents=True, exist_ok=True)
    env = environment(default_device(device))
    rows: dict[str, dict] = {}
    for v in variants:
        rows[v.name] = run_variant(
            data, out / "variants" / v.name, v, configs[v.name], split_dir, protocol, device, progress
        )
        _write_report(report_path, protocol, variants, rows, env)
    ordered = [rows[v.name] for v in variants]
    files = write_table(out, ordered)
    files.append(str(variants_figure(out / "fig7_variants.png", samples[:figure_images], out, ordered)))
    files += [str(p) for p in sweep_plots(out, ordered)]
    return _write_report(report_path, protocol, variants, rows, env, files)


def _write_report(path: Path, protocol: dict, variants: list[Variant], rows: dict, env: dict, files=None) -> dict:
    report = {
        "protocol": protocol,
        "variants": [v.name for v in variants],
        "rows": [rows[v.name] for v in variants if v.name in rows],
        "files": files or [],
        "environment": env,
    }
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return report


def run_variant(
    data: Path, folder: Path, variant: Variant, cfg: RunConfig, split_dir: Path, protocol: dict, device, progress
) -> dict:
    """One variant: train (or resume, or keep when finished), predict the split, evaluate; its row."""
    from ..api import SegDiff
    from ..metrics.evaluate import evaluate_dirs
    from ..predict.run import predict_folder
    from ..train.loop import train

    done = folder / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    run, pred = folder / "run", folder / "pred"
    resume = (run / "config.json").is_file()
    if progress:
        print(f"ablation: {variant.name} ({variant.label}): {'resuming' if resume else 'training'} in {run}")
    summary = train(data, run, cfg, resume=resume, device=device, progress=progress)
    model = SegDiff.load(run, weights=protocol["weights"], device=device)
    opts = model.sampling_options(
        generations=protocol["generations"], steps=protocol["sampling_steps"], seed=protocol["seed"]
    )
    predicted = predict_folder(model, split_dir / "images", pred, batch_images=8, progress=progress, opts=opts)
    metrics = evaluate_dirs(pred, split_dir, out=folder / "metrics.json", reliability_png=False)
    row = {
        "variant": variant.name,
        "label": variant.label,
        "sweep": list(variant.sweep) if variant.sweep else None,
        "overrides": dict(variant.overrides),
        **{k: metrics[k] for k in ("iou", "f1", "wcov", "boundf")},
        "images": metrics["n_images"],
        "train_steps": summary["step"],
        "train_seconds": summary["elapsed_s"],
        # over the images this call predicted (a resumed prediction times only those it had left)
        "predict_seconds_per_image": predicted["seconds_per_image"],
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "sampler": opts.sampler,
        "sampling_steps": opts.steps_for(model.config.diffusion.steps),
        "T": model.config.diffusion.steps,
    }
    atomic_write_text(done, json.dumps(row, indent=2) + "\n")
    return row


def write_table(out: Path, rows: list[dict]) -> list[str]:
    """table4.md and table4.csv: variant, IoU, F1, WCov, FBound in percent (the paper's Table 4 layout)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["variant", "name", "IoU", "F1", "WCov", "FBound", "parameters", "train_steps"])
    lines = ["| variant | IoU | F1 | WCov | FBound | parameters | steps |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pct = [f"{100 * r[k]:.2f}" for k in ("iou", "f1", "wcov", "boundf")]
        w.writerow([r["label"], r["variant"], *pct, r["parameters"], r["train_steps"]])
        lines.append(
            f"| {r['label']} (`{r['variant']}`) | {' | '.join(pct)} | {r['parameters']:,} | {r['train_steps']} |"
        )
    atomic_write_text(out / "table4.csv", buf.getvalue())
    atomic_write_text(out / "table4.md", "\n".join(lines) + "\n")
    return [str(out / "table4.md"), str(out / "table4.csv")]


def variants_figure(path: Path, samples: list, out: Path, rows: list[dict]) -> Path:
    """Fig. 7: per image (row), the input, each variant's probability map (jet: 0 blue, 1 red) and the truth."""
    from ..data.io import read_image, read_mask, read_prob
    from ..predict.figure import GREY, PROBABILITY, panel_figure

    grid = []
    for s in samples:
        image = read_image(s.image)
        panels = [(image if image.ndim == 2 or image.shape[-1] in (3, 4) else image[..., 0], GREY)]
        for r in rows:
            panels.append((read_prob(out / "variants" / r["variant"] / "pred" / "prob" / f"{s.stem}.tif"), PROBABILITY))
        panels.append((read_mask(s.mask).astype(float), GREY))
        grid.append(panels)
    titles = ["input", *[f"{r['label']}\n{r['variant']}" for r in rows], "ground truth"]
    panel_figure(path, grid, titles, row_labels=[s.stem for s in samples], extra_height=0.3)
    return path


def sweep_plots(out: Path, rows: list[dict]) -> list[Path]:
    """fig8_rrdb.png (IoU per number of RRDB blocks) and fig9_T.png (IoU and seconds per image per T) over
    the variants of a --rrdb or --T sweep; nothing when there is no sweep."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = []
    for tag, name, xlabel in (("rrdb", "fig8_rrdb.png", "RRDB blocks"), ("T", "fig9_T.png", "diffusion steps T")):
        pts = sorted((r["sweep"][1], r) for r in rows if r.get("sweep") and r["sweep"][0] == tag)
        if not pts:
            continue
        xs = [x for x, _ in pts]
        ncols = 2 if tag == "T" else 1
        fig = Figure(figsize=(4.2 * ncols, 3.4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        axes[0].plot(xs, [100 * r["iou"] for _, r in pts], "o-")
        axes[0].set_xlabel(xlabel)
        axes[0].set_ylabel("mIoU (%)")
        axes[0].set_title(f"mIoU per {xlabel}")
        if tag == "T":
            axes[1].plot(xs, [r["predict_seconds_per_image"] for _, r in pts], "o-")
            axes[1].set_xlabel(xlabel)
            axes[1].set_ylabel("seconds per image")
            axes[1].set_title("generation time per image")
        for ax in axes:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        paths.append(out / name)
    return paths


def cli(args) -> int:
    """`segdiff ablation` (arguments from segdiff.bench.add_parsers)."""
    variants = parse_variants(args.variants, args.rrdb, args.T)
    report = run_ablation(
        args.data,
        args.out,
        args.preset,
        variants,
        steps=args.steps,
        minutes=args.minutes,
        split=args.split,
        sets=args.set or [],
        seed=args.seed,
        generations=args.generations,
        sampling_steps=args.sampling_steps,
        weights=args.weights,
        figure_images=args.figure_images,
        device=args.device,
        progress=not args.quiet,
    )
    print((Path(args.out) / "table4.md").read_text(), end="")
    print(f"ablation: {len(report['rows'])} variant(s); files in {args.out}")
    return 0
