"""The `segdiff` command: train | predict | evaluate | prepare | demo | benchmark | study."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import UserError


def _train(args) -> int:
    from .config import RunConfig, preset
    from .train.loop import train

    cfg = preset(args.preset) if args.preset else RunConfig()
    if args.preset is None and not args.resume:
        raise UserError("--preset is required for a new run (tiny, monuseg, vaihingen, cityscapes)")
    tc = cfg.train
    for name in ("max_steps", "batch_size", "lr", "seed", "val_every", "save_every", "num_workers", "max_minutes"):
        if getattr(args, name) is not None:
            setattr(tc, name, getattr(args, name))
    if args.val_fraction is not None:
        cfg.data.val_fraction = args.val_fraction
    if args.schedule:
        cfg.diffusion.schedule = args.schedule
    if args.resume and args.max_steps is None:
        tc.max_steps = RunConfig.load(f"{args.out}/config.json").train.max_steps
    summary = train(args.data, args.out, cfg, resume=args.resume, device=args.device, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # once under torchrun
        print(json.dumps(summary))
    return 0


def _predict(args) -> int:
    from .api import SegDiff
    from .predict.run import predict_folder

    model = SegDiff.load(args.checkpoint, weights=args.weights, device=args.device)
    d = model.config.data
    d.predict_mode = args.mode or d.predict_mode
    d.tile_stride = args.tile_stride or d.tile_stride
    d.tile_blend = args.blend or d.tile_blend
    if args.tile_stride and not 0 < args.tile_stride <= d.size:
        raise UserError(f"--tile-stride {args.tile_stride}: must be between 1 and the window size {d.size}")
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
        generations=args.generations,
        steps=args.steps,
        sampler=args.sampler,
        variance=args.variance,
        eta=args.eta,
        seed=args.seed,
        batch_generations=args.batch_generations,
    )
    print(
        f"predicted {summary['predicted']} image(s), skipped {summary['skipped']} already written, "
        f"{summary['seconds_per_image']:.2f} s/image -> {args.out}"
    )
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    report = run_demo(args.out, max_steps=args.max_steps, progress=not args.quiet, device=args.device)
    print(json.dumps(report, indent=2))
    print(f"report: {args.out}/report.json, figure: {args.out}/figure.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segdiff", description="SegDiff: segmentation with diffusion models")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on ROOT/{train,val}/{images,masks}")
    t.add_argument("--data", required=True, help="data root with train/ (and optionally val/)")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--preset", choices=["tiny", "monuseg", "vaihingen", "cityscapes"])
    t.add_argument("--max-steps", type=int)
    t.add_argument("--max-minutes", type=float, help="stop after this wall time (and save)")
    t.add_argument("--batch-size", type=int, help="global batch size (split over torchrun processes)")
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--val-every", type=int)
    t.add_argument("--save-every", type=int)
    t.add_argument("--val-fraction", type=float, help="fraction of train held out when ROOT/val is absent")
    t.add_argument("--schedule", choices=["scaled", "paper"], help="beta schedule (default: scaled, see docs)")
    t.add_argument("--num-workers", type=int, help="data-loading worker processes")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)

    r = sub.add_parser(
        "predict",
        help="predict masks, probability and uncertainty maps",
        description="Multiple generations (paper 4.1). Defaults come from the run's preset: tiny uses "
        "10 generations x 5 steps with the small variance (chosen by `segdiff study` on the demo model); the "
        "paper protocol is --generations 30 --steps 100 --variance large.",
    )
    r.add_argument("--checkpoint", required=True, help="run folder written by segdiff train")
    r.add_argument("--input", required=True, help="an image file or a folder of images")
    r.add_argument("--out", required=True)
    r.add_argument("--generations", type=int, help="samples averaged per image (paper: 30)")
    r.add_argument("--steps", type=int, help="sampling steps K <= T (respaced; paper: 100 = T)")
    r.add_argument("--sampler", choices=["ddpm", "ddim", "dpm++"])
    r.add_argument("--variance", choices=["large", "small"], help="DDPM variance beta_t or beta-tilde_t")
    r.add_argument("--eta", type=float, help="DDIM stochasticity")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--weights", default="best", choices=["best", "ema", "raw"])
    r.add_argument(
        "--mode",
        choices=["resize", "tile", "pad"],
        help="images of another size than the training size: resize and back, sliding windows, or pad "
        "(default: the preset's)",
    )
    r.add_argument("--tile-stride", type=int, help="window stride for --mode tile (default: the window size)")
    r.add_argument("--blend", choices=["uniform", "gaussian"], help="weights of overlapping windows")
    r.add_argument("--batch-images", type=int, default=4, help="images of one size per batch")
    r.add_argument("--batch-generations", type=int, help="generations x windows per network call (memory)")
    r.add_argument("--save-generations", action="store_true", help="also write every generation")
    r.add_argument("--num-parts", type=int, help="split the folder into P parts ...")
    r.add_argument("--part-id", type=int, help="... and predict part I (0-based)")
    r.add_argument("--overwrite", action="store_true", help="redo images whose mask is already written")
    r.add_argument("--device")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_predict)

    from .metrics.cli import add_parser as add_evaluate

    add_evaluate(sub)
    from .data.prepare.cli import add_parser as add_prepare

    add_prepare(sub)

    d = sub.add_parser("demo", help="synthetic data -> train tiny -> predict -> evaluate -> report (no download)")
    d.add_argument("--out", default="segdiff-demo")
    d.add_argument("--max-steps", type=int, help="training steps (default: the tiny preset's)")
    d.add_argument("--device")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_demo)

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
