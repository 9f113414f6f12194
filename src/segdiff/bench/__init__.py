"""Every benchmark of the project (docs/benchmarks.md): `segdiff benchmark`, `segdiff study` and the programs
run as `python -m segdiff.bench.<name>`.

speed/:             `segdiff benchmark`: seconds per image, TFLOP/s, memory, training throughput (protocol.py
                    and the flag checks, measure.py, inference.py, training.py, profiler.py, report.py).
study.py:           `segdiff study`: IoU / F1 / calibration against generations, sampling steps and sampler.
ablation.py:        `segdiff ablation`: the paper's ablation (Table 4, Fig. 7) and RRDB / T sweeps (Figs. 8, 9).
monuseg/:           the MoNuSeg benchmark within a time budget (training, choice of the sampling setting on
                    validation, test prediction, evaluation, a one-pass baseline): args.py, run.py, view.py,
                    run_config.py, selection.py (the grid, the rule that chooses, its figure), figures.py,
                    results.py, baseline.py.
recipe_cpu.py:      one training lever at a time on the MoNuSeg validation images, on a CPU.
reliability_gpu.py: GPU memory estimate against measurement; the cost of the non-finite check.
compile_probe.py:   compile time in a fresh process (`segdiff benchmark --compile-times`), the auto rule.
reference.py:       the reference sampling path (the authors' way), kept for same-run comparisons.
machine.py:         the environment every report records, and the --device check.

The argument parsers live here and import nothing heavy, so that `segdiff --help` stays fast.
"""

from __future__ import annotations

from ..config import PRESETS, SAMPLERS, PredictConfig


def add_parsers(subparsers) -> None:
    """Register the `benchmark`, `study` and `ablation` subcommands (called by segdiff.cli)."""
    _add_benchmark(subparsers)
    _add_study(subparsers)
    _add_ablation(subparsers)


def _run_benchmark(args) -> int:
    from .speed import cli

    return cli(args)


def _run_study(args) -> int:
    from .study import cli

    return cli(args)


def _add_benchmark(sub) -> None:
    b = sub.add_parser(
        "benchmark",
        help="seconds per image (fast vs reference path), TFLOP/s, memory, training throughput",
        description="Speed of the fast sampling path against the reference path (the authors' way: G(I) at "
        "every step, generations one after another, fp16), measured in the same run, per preset at its "
        "resolution with random weights. Numbers measured on fewer steps or generations are scaled linearly "
        "and labelled so.",
    )
    b.add_argument(
        "--preset",
        nargs="+",
        choices=list(PRESETS),
        help="default: all three paper presets",
    )
    b.add_argument("--quick", action="store_true", help="tiny preset, few repetitions: a CPU smoke run (< 1 min)")
    b.add_argument("--generations", type=int, default=PredictConfig.generations, help="default: the paper's 30")
    b.add_argument("--steps", type=int, default=100, help="sampling steps of the protocol (default 100 = T)")
    b.add_argument("--sampler", default="ddpm", choices=SAMPLERS)
    b.add_argument("--measure-steps", type=int, help="steps actually timed per call, scaled to --steps (default 20)")
    b.add_argument(
        "--reference-generations",
        type=int,
        help="generations the reference path actually runs, scaled to --generations (default all)",
    )
    b.add_argument("--repeats", type=int, help="timed calls per path, median reported (default 3)")
    b.add_argument("--batch-generations", type=int, help="fast path: generations per network batch (preset's)")
    b.add_argument(
        "--variants",
        default="default",
        help="comma-separated fast-path variants: default, channels_last, compile, compile-max-autotune,"
        " cudagraphs, or flags joined by '+' (e.g. channels_last+cudagraphs)",
    )
    b.add_argument(
        "--reference-batched",
        action="store_true",
        help="also time the authors' way with generations batched (G(I) still at every step)",
    )
    b.add_argument("--no-reference", action="store_true", help="skip the reference path")
    b.add_argument("--no-train", action="store_true", help="skip the training-step throughput")
    b.add_argument("--train-steps", type=int, help="timed training steps per mode (default 10)")
    b.add_argument(
        "--train-compile",
        action="store_true",
        help="also time the training step under torch.compile: samples/s eager vs compiled, and the compile time",
    )
    b.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    b.add_argument(
        "--threads", type=int, help="CPU threads (torch.set_num_threads); 1 avoids OpenMP spinning on a busy machine"
    )
    b.add_argument(
        "--compile-times",
        action="store_true",
        help="per preset: compile time cold and warm, each in a fresh process (an empty cache folder, then the same)",
    )
    b.add_argument(
        "--compile-cache", help="where the compiled variants' cache folders go (default: a temporary folder)"
    )
    b.add_argument(
        "--profile",
        metavar="DIR",
        help="torch.profiler over 2 sampling steps of the first preset: top kernels and the SDPA kernel, to DIR",
    )
    b.add_argument("--out", help="write the JSON report to this file")
    b.add_argument("--md", help="write the results table (markdown) to this file")
    b.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    b.set_defaults(func=_run_benchmark)


def _add_study(sub) -> None:
    s = sub.add_parser(
        "study",
        help="IoU, F1, calibration vs generations, sampling steps and sampler, with seconds per image",
        description="Quality against cost (the paper's Figs. 4, 5, 6 and 9): each image is sampled once with "
        "--generations generations per sampler and number of steps; the curve over generations uses the mean "
        "of the first n samples. Writes study.csv, study_per_image.csv, study.json and PNG plots to --out.",
    )
    s.add_argument("--checkpoint", required=True, help="run folder written by segdiff train")
    s.add_argument("--data", required=True, help="a split folder with images/ and masks/ (e.g. ROOT/val)")
    s.add_argument("--images", type=int, help="use only the first N images (sorted by name)")
    s.add_argument(
        "--generations", type=int, default=PredictConfig.generations, help="samples per image (curve over 1..N; 30)"
    )
    s.add_argument("--steps", help="comma-separated sampling steps (default 5,10,25,50,100, up to T)")
    s.add_argument(
        "--samplers",
        default="ddpm-large,ddpm-small,ddim,dpm++",
        help="comma-separated: ddpm-large, ddpm-small, ddim, ddim-eta<x>, dpm++",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--weights", default="best", choices=["best", "ema", "raw"])
    s.add_argument("--batch-generations", type=int, help="generations per network batch (memory)")
    s.add_argument("--out", default="segdiff-study", help="output folder")
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_run_study)


def _run_ablation(args) -> int:
    from .ablation import cli

    return cli(args)


def _add_ablation(sub) -> None:
    a = sub.add_parser(
        "ablation",
        help="the paper's ablation (Table 4, Fig. 7) and RRDB / T sweeps (Figs. 8, 9) on your data",
        description="Trains each chosen variant of the preset with the same seed, steps (or minutes) and data, "
        "predicts --split with 9 generations averaged (the paper's ablation protocol), and writes table4.md / "
        "table4.csv (variant, IoU, F1, WCov, FBound), fig7_variants.png and, for a sweep, fig8_rrdb.png / "
        "fig9_T.png to --out. Rerun the same command to continue an interrupted run. Variants: full (the "
        "method), concat (one), hardnet (two), no-encoder (three), inject1, inject3, inject5 (four to six), all.",
    )
    a.add_argument("--data", required=True, help="data root with train/ (and val/, test/) folders")
    a.add_argument("--out", required=True, help="output folder (rerun with the same one to continue)")
    a.add_argument("--preset", required=True, help="the base configuration of every variant")
    a.add_argument(
        "--variants",
        default="",
        help="comma-separated: full, concat, hardnet, no-encoder, inject1, inject3, inject5, or all",
    )
    a.add_argument("--rrdb", help="RRDB-count sweep (Fig. 8), e.g. 1,3,5,10: one variant per value")
    a.add_argument("--T", help="diffusion-steps sweep (Fig. 9), e.g. 25,50,100: one variant per value")
    length = a.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="optimizer steps per variant")
    length.add_argument("--minutes", type=float, help="training time budget per variant (train.budget_minutes)")
    a.add_argument("--split", default="test", help="the folder of --data to predict and score (default test)")
    a.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides for every variant")
    a.add_argument("--seed", type=int, default=0, help="training seed and prediction noise seed of every variant")
    a.add_argument("--generations", type=int, default=9, help="generations averaged per image (paper: 9)")
    a.add_argument("--sampling-steps", type=int, help="sampling chain length K (default: the preset's)")
    a.add_argument("--weights", default="best", choices=["best", "ema", "raw"])
    a.add_argument("--figure-images", type=int, default=4, help="images (rows) in fig7_variants.png")
    a.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_run_ablation)
