"""The `segdiff serve` subcommand (imports the web libraries only when run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="a local web page: predict with a run, browse an evaluation",
        description="Serve a page to upload images and see mask, probability, uncertainty and every generation "
        "(--checkpoint), and to browse the per-image scores of `segdiff evaluate --out SUMMARY.json` (--eval). "
        "Needs the optional extra: pip install -e '.[serve]'. Binds to 127.0.0.1 unless --host says otherwise. "
        "See docs/serve.md.",
    )
    p.add_argument("--checkpoint", type=Path, metavar="RUN", help="run folder written by segdiff train")
    p.add_argument("--weights", default="best", choices=["best", "ema", "raw"])
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--eval", type=Path, metavar="SUMMARY.json", help="summary written by segdiff evaluate --out")
    p.add_argument("--images", type=Path, metavar="DIR", help="the evaluated images (a folder, or a split folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest request, all files together")
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest image, width x height")
    p.add_argument("--max-images", type=int, default=16, help="most images in one request")
    p.add_argument("--max-generations", type=int, default=100, help="most generations a request may ask for")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is None and args.eval is None:
        raise UserError("give --checkpoint RUN (predict page), --eval SUMMARY.json (evaluation browser), or both")
    if args.images is not None and args.eval is None:
        raise UserError("--images goes with --eval SUMMARY.json (the images that were evaluated)")
    for name in ("max_upload_mb", "max_pixels", "max_images", "max_generations"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: must be between 0 and 65535")
    try:
        from .app import Limits, create_app
        from .server import allowed_hosts, is_loopback
        from .server import run as run_server
    except ImportError as exc:
        raise UserError(f"segdiff serve needs the optional extra: pip install -e '.[serve]' ({exc})") from None
    from ..api import SegDiff
    from .evalbrowser import EvalIndex

    evaluation = EvalIndex(args.eval, args.images) if args.eval is not None else None
    model = SegDiff.load(args.checkpoint, weights=args.weights, device=args.device) if args.checkpoint else None
    limits = Limits(args.max_upload_mb, args.max_pixels, args.max_images, args.max_generations)
    app = create_app(
        model,
        evaluation,
        limits,
        allowed_hosts=allowed_hosts(args.host, args.port),
        run_name=args.checkpoint.name if args.checkpoint else "",
    )
    if not is_loopback(args.host):
        print(
            f"segdiff serve: warning: listening on {args.host}: anyone who can reach this port can run "
            "predictions and read the served folders"
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"segdiff serve: http://{host}:{args.port}/  (Ctrl-C to stop)", flush=True)
    try:
        run_server(app, args.host, args.port)
    except OSError as exc:
        raise UserError(f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror})") from None
    return 0
