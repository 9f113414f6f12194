"""The `segdiff` command: train | predict | config | evaluate | prepare | serve | demo | benchmark | study |
ablation."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from .config import BLENDS, COMPILE_MODES, PREDICT_MODES, PRESETS, SAMPLERS, SCHEDULES, VARIANCES
from .errors import UserError

# shortcut flags (argparse dest) -> the config key they set; `--set KEY=VALUE` reaches every key
TRAIN_FLAGS = {
    "max_steps": "train.max_steps",
    "max_minutes": "train.max_minutes",
    "budget_minutes": "train.budget_minutes",
    "compile": "train.compile",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "val_every": "train.val_every",
    "save_every": "train.save_every",
    "num_workers": "train.num_workers",
    "val_fraction": "data.val_fraction",
    "schedule": "diffusion.schedule",
}
PREDICT_FLAGS = {
    "generations": "generations",
    "steps": "sampling_steps",
    "sampler": "sampler",
    "variance": "variance",
    "eta": "eta",
    "seed": "seed",
    "mode": "mode",
    "tile_stride": "tile_stride",
    "blend": "blend",
    "batch_generations": "batch_generations",
}


def _overrides(args, flags: dict[str, str], prefix: str = ""):
    """--set assignments (text) and the shortcut flags given (typed), and how the user wrote each key."""
    from .config import parse_assignments

    sets = parse_assignments(args.set or [], prefix)
    labels = {prefix + k: f"--set {k}={v}" for k, v in sets.items()}
    given = {}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if key in sets or (key == "sampling_steps" and "steps" in sets):
            raise UserError(f"{flag} and --set {key if key in sets else 'steps'}: the same setting given twice")
        given[key] = value
        labels[prefix + key] = f"{flag} {value}"
    if "steps" in sets:  # the earlier name of sampling_steps
        labels[prefix + "sampling_steps"] = labels[prefix + "steps"]
    return sets, given, labels


@contextlib.contextmanager
def _labelled(labels: dict[str, str]):
    """A bad value is reported as the user wrote it (--generations 0, --set data.size=30), not by its key."""
    from .config import ConfigError

    try:
        yield
    except ConfigError as exc:
        if exc.key in labels:
            raise UserError(f"{labels[exc.key]}: {exc.problem}") from None
        raise


def _run_config(args, base=None):
    """--preset, then --config FILE, then --set, then the shortcut flags, over `base` (resume: the saved config)."""
    from .config import RunConfig, apply_overrides, merge_dict, preset, read_json

    sets, given, labels = _overrides(args, TRAIN_FLAGS if args.command == "train" else {})
    with _labelled(labels):
        cfg = base or (preset(args.preset) if args.preset else RunConfig())
        if base is not None and args.preset:
            cfg = replace(cfg, preset=args.preset)  # a change of preset is refused on resume
        if args.config:
            cfg = merge_dict(cfg, read_json(args.config), str(args.config))
        cfg = apply_overrides(cfg, sets, text=True)
        cfg = apply_overrides(cfg, given)
        cfg.validate()
        cfg.predict.check_explicit({k.removeprefix("predict.") for k in sets if k.startswith("predict.")})
    return cfg


def _train(args) -> int:
    from .config import RunConfig
    from .train.loop import train

    base = None
    if args.resume:
        base = RunConfig.load(f"{args.out}/config.json") if os.path.isfile(f"{args.out}/config.json") else None
        if base is None:
            raise UserError(f"--resume: {args.out} holds no run to resume (no config.json)")
    elif args.preset is None and args.config is None:
        raise UserError("--preset (tiny, monuseg, vaihingen, cityscapes) or --config FILE is required for a new run")
    cfg = _run_config(args, base)
    if base is None and cfg.train.budget_fixed_at is not None:
        # a run's config.json given as --config: its fixed max_steps belongs to that run; a new run with it would
        # skip measuring its own throughput and keep the other run's step count
        raise UserError(
            f"--config {args.config}: train.budget_fixed_at = {cfg.train.budget_fixed_at} is set by the run that "
            "wrote it (when it fixed max_steps); remove it (or set it to null) to start a new run"
        )
    summary = train(args.data, args.out, cfg, resume=args.resume, device=args.device, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # once under torchrun
        print(json.dumps(summary))
    return 0


def _config(args) -> int:
    from .atomic import atomic_write_text

    text = json.dumps(_run_config(args).to_dict(), indent=2) + "\n"
    if args.out:
        atomic_write_text(Path(args.out), text)
        print(f"config: {args.out}")
    else:
        print(text, end="")
    return 0


def _predict(args) -> int:
    from .api import SegDiff
    from .predict.run import predict_folder

    model = SegDiff.load(args.checkpoint, weights=args.weights, device=args.device)
    sets, given, labels = _overrides(args, PREDICT_FLAGS, prefix="predict.")
    with _labelled(labels):
        opts = model.sampling_options(model.config.predict.override(sets, text=True), **given)
        opts.check_explicit({"sampling_steps" if k == "steps" else k for k in (*sets, *given)})
    if model.config.data.volume.intensity is not None:  # trained on an nnU-Net data set: whole volumes
        from .predict.volume import predict_volumes

        unused = [f for f, v in (("--num-parts", args.num_parts), ("--part-id", args.part_id)) if v is not None]
        unused += ["--save-generations"] if args.save_generations else []
        if unused:
            raise UserError(f"{', '.join(unused)}: not available for volumes (this run trained on an nnU-Net data set)")
        s = predict_volumes(
            model, args.input, args.out, args.batch_images, args.overwrite, progress=not args.quiet, opts=opts
        )
        print(f"predicted {s['predicted']} case(s) ({s['slices']} slices), skipped {s['skipped']} -> {args.out}")
        return 0
    summary = predict_folder(
        model,
        args.input,
        args.out,
        batch_images=args.batch_images,
        save_generations=args.save_generations,
        num_parts=args.num_parts,
        part_id=args.part_id,
        overwrite=args.overwrite,
        progress=not args.quiet,
        opts=opts,
    )
    print(
        f"predicted {summary['predicted']} image(s), skipped {summary['skipped']} already written, "
        + (f"left {summary['busy']} to the other process(es) predicting them, " if summary.get("busy") else "")
        + f"{summary['seconds_per_image']:.2f} s/image -> {args.out}"
    )
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    if args.volumes:
        from .demo_volumes import run_volume_demo

        report = run_volume_demo(args.out, max_steps=args.max_steps, progress=not args.quiet, device=args.device)
        print(json.dumps(report, indent=2))
        print(f"report: {args.out}/report.json")
        return 0

    with _labelled({"train.max_steps": f"--max-steps {args.max_steps}"}):
        report = run_demo(
            args.out,
            max_steps=args.max_steps,
            progress=not args.quiet,
            device=args.device,
            classes=args.classes,
            channels=args.channels,
        )
    print(json.dumps(report, indent=2))
    print(f"report: {args.out}/report.json, figure: {args.out}/figure.png")
    return 0


SET_HELP = (
    "set any config field: dotted KEY=VALUE pairs, e.g. data.size=64 data.augment.crop=64 "
    "model.channel_mult=1,2,2 train.max_minutes=none (see `segdiff config`)"
)


def choices(values) -> str:
    """A choice list shown in --help; the config layer checks the value (one-line errors)."""
    return "{" + ",".join(values) + "}"


def add_config_options(q) -> None:
    q.add_argument("--preset", metavar=choices(PRESETS), help="start from a named config")
    q.add_argument("--config", metavar="FILE", help="a JSON config (complete or partial; over --preset)")
    q.add_argument("--set", nargs="+", metavar="KEY=VALUE", action="extend", help=SET_HELP)


def add_train_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train a model on ROOT/{train,val}/{images,masks}",
        description="Settings: --preset, then --config FILE, then --set KEY=VALUE, then the shortcut flags. "
        "With --resume the run's config.json is the base: only train.max_steps, max_minutes, log_every, "
        "val_every, save_every and num_workers may change (recorded in log.txt); other changes are refused.",
    )
    t.add_argument(
        "--data", required=True, help="data root with train/ (and optionally val/), or an nnU-Net v2 data set"
    )
    t.add_argument("--out", required=True, help="run folder to write")
    add_config_options(t)
    t.add_argument("--max-steps", type=int, help="= --set train.max_steps=N")
    t.add_argument("--max-minutes", type=float, help="stop after this wall time (and save); = train.max_minutes")
    t.add_argument(
        "--budget-minutes",
        type=float,
        help="train for this many minutes, turned once into a fixed train.max_steps (written to config.json, "
        "kept on --resume) from the throughput of the first steps; = train.budget_minutes",
    )
    t.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        help="torch.compile the training step (auto: on CUDA when the run repays the compile time); = train.compile",
    )
    t.add_argument("--batch-size", type=int, help="global batch size (split over torchrun processes)")
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--val-every", type=int)
    t.add_argument("--save-every", type=int)
    t.add_argument("--val-fraction", type=float, help="fraction of train held out when ROOT/val is absent")
    t.add_argument("--schedule", metavar=choices(SCHEDULES), help="beta schedule (default: scaled, see docs)")
    t.add_argument("--num-workers", type=int, help="data-loading worker processes")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)


def add_config_parser(sub) -> None:
    c = sub.add_parser(
        "config",
        help="print a complete run config (JSON) to edit and pass to train --config",
        description="Prints the config --preset, --config and --set give (checked), as train would use it.",
    )
    add_config_options(c)
    c.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    c.set_defaults(func=_config)


def add_predict_parser(sub) -> None:
    r = sub.add_parser(
        "predict",
        help="predict masks, probability and uncertainty maps",
        description="Multiple generations (paper 4.1). Defaults come from the run's config.json (`predict`): tiny "
        "uses 10 generations x 5 steps with the small variance (chosen by `segdiff study` on the demo model); "
        "the paper protocol is --generations 30 --steps 100 --variance large. Any prediction setting: --set "
        "KEY=VALUE with the keys of `predict` (e.g. sampler=ddim eta=0.5 clip_x0=false amp=fp32).",
    )
    r.add_argument("--checkpoint", required=True, help="run folder written by segdiff train")
    r.add_argument("--input", required=True, help="an image file or a folder of images")
    r.add_argument("--out", required=True)
    r.add_argument(
        "--set",
        nargs="+",
        metavar="KEY=VALUE",
        action="extend",
        help="prediction settings (keys of the config's predict section, with or without 'predict.')",
    )
    r.add_argument("--generations", type=int, help="samples averaged per image (paper: 30)")
    r.add_argument("--steps", type=int, help="sampling steps K <= T (respaced; paper: 100 = T); = sampling_steps")
    r.add_argument("--sampler", metavar=choices(SAMPLERS))
    r.add_argument("--variance", metavar=choices(VARIANCES), help="DDPM variance beta_t or beta-tilde_t (ddpm only)")
    r.add_argument("--eta", type=float, help="DDIM stochasticity (ddim only)")
    r.add_argument("--seed", type=int, help="noise seed (default 0)")
    r.add_argument("--weights", default="best", choices=["best", "ema", "raw"])
    r.add_argument(
        "--mode",
        metavar=choices(PREDICT_MODES),
        help="images of another size than the training size: resize and back, sliding windows, or pad "
        "(default: the preset's)",
    )
    r.add_argument("--tile-stride", type=int, help="window stride for --mode tile (default: the window size)")
    r.add_argument("--blend", metavar=choices(BLENDS), help="weights of overlapping windows")
    r.add_argument("--batch-images", type=int, default=4, help="images of one size (or slices of a volume) per batch")
    r.add_argument("--batch-generations", type=int, help="generations x windows per network call (memory)")
    r.add_argument("--save-generations", action="store_true", help="also write every generation")
    r.add_argument("--num-parts", type=int, help="split the folder into P parts ...")
    r.add_argument("--part-id", type=int, help="... and predict part I (0-based)")
    r.add_argument("--overwrite", action="store_true", help="redo images whose mask is already written")
    r.add_argument("--device")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_predict)


def add_demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="synthetic data -> train tiny-fast -> predict -> evaluate -> report (no download)")
    d.add_argument("--out", default="segdiff-demo")
    d.add_argument("--max-steps", type=int, help="training steps (default: 600 of the tiny-fast preset)")
    d.add_argument(
        "--classes",
        type=int,
        help="multi-class demo: 2 or 3 foreground classes told apart by texture only (default: the binary demo)",
    )
    d.add_argument("--channels", type=int, default=1, help="image channels of the multi-class demo (e.g. 1 or 4)")
    d.add_argument(
        "--volumes",
        action="store_true",
        help="3D demo: synthetic two-modality volumes in the nnU-Net layout, trained on slices, scored in 3D",
    )
    d.add_argument("--device")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    from .data.prepare.cli import add_parser as add_prepare
    from .metrics.cli import add_parser as add_evaluate
    from .serve.cli import add_parser as add_serve

    p = argparse.ArgumentParser(prog="segdiff", description="SegDiff: segmentation with diffusion models")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (add_train_parser, add_config_parser, add_predict_parser, add_evaluate, add_prepare, add_serve):
        add(sub)
    add_demo_parser(sub)
    try:
        from .bench import add_parsers as add_bench
    except ImportError:
        pass
    else:
        add_bench(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"segdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segdiff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
