"""`segdiff prepare NAME --src DIR --out ROOT`: convert an official benchmark release to data folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import UserError
from .cityscapes import CITYSCAPES_CLASSES, DEFAULT_MIN_AREA, PROTOCOLS

DATASETS = ("monuseg", "vaihingen", "cityscapes")
DEFAULT_SIZE = {"monuseg": 512, "vaihingen": 256, "cityscapes": 128}
ONLY_FOR = {
    "protocol": "cityscapes",
    "classes": "cityscapes",
    "min_area": "cityscapes",
    "n_train": "vaihingen",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `prepare` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "prepare",
        help="convert MoNuSeg, Vaihingen or Cityscapes from their official files to ROOT/{train,test}/...",
        description=(
            "Convert a benchmark from its official release to the data-folder convention "
            "ROOT/{train,test}/{images,masks}/<stem>.png and write ROOT/prepare.json. "
            "See docs/data.md for the source layouts."
        ),
    )
    p.add_argument("name", metavar="NAME", choices=DATASETS, help="one of: " + ", ".join(DATASETS))
    p.add_argument("--src", type=Path, required=True, metavar="DIR", help="the unpacked official release")
    p.add_argument("--out", type=Path, required=True, metavar="ROOT", help="output folder (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace what a previous prepare run wrote in ROOT")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="output side in pixels (default: monuseg 512, vaihingen 256, cityscapes model input 128)",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="cityscapes crop: tight box (default) or expansion",
    )
    p.add_argument(
        "--classes",
        default=None,
        metavar="A,B",
        help="cityscapes classes, comma-separated (default all: " + ",".join(CITYSCAPES_CLASSES) + ")",
    )
    p.add_argument(
        "--min-area",
        type=int,
        default=None,
        dest="min_area",
        help=f"cityscapes: skip instances smaller than this many pixels (default {DEFAULT_MIN_AREA})",
    )
    p.add_argument(
        "--n-train",
        type=int,
        default=None,
        dest="n_train",
        help="vaihingen: buildings in train (default 100)",
    )
    p.add_argument("--seed", type=int, default=0, help="cityscapes expansion: seed of the train box draws")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from . import prepare_cityscapes, prepare_monuseg, prepare_vaihingen

    for opt, dataset in ONLY_FOR.items():
        if getattr(args, opt, None) is not None and args.name != dataset:
            flag = "--" + opt.replace("_", "-")
            raise UserError(f"{flag}: applies to {dataset} only, not {args.name}; remove it")
    size = DEFAULT_SIZE[args.name] if args.size is None else args.size
    if args.name == "monuseg":
        info = prepare_monuseg(args.src, args.out, size=size, overwrite=args.overwrite)
    elif args.name == "vaihingen":
        kw = {} if args.n_train is None else {"n_train": args.n_train}
        info = prepare_vaihingen(args.src, args.out, size=size, overwrite=args.overwrite, **kw)
    else:
        info = prepare_cityscapes(
            args.src,
            args.out,
            protocol=args.protocol or "tight",
            classes=args.classes,
            min_area=DEFAULT_MIN_AREA if args.min_area is None else args.min_area,
            input_size=size,
            overwrite=args.overwrite,
            seed=args.seed,
        )
        for split in ("train", "test"):
            per = {c: n[split] for c, n in info["counts"].items()}
            shown = ", ".join(f"{c} {n}" for c, n in per.items())
            print(f"{split}: {sum(per.values())} crops ({shown}) -> {args.out}/<class>/{split}")
        return 0
    for split, n in info["counts"].items():
        print(f"{split}: {n} image/mask pairs at {size}x{size} -> {Path(args.out) / split}")
    return 0
