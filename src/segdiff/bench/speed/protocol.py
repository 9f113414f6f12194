"""What `segdiff benchmark` measures (`Protocol`, the fast-path variants) and the checks of the flags that set
it: a bad value is a UserError naming its flag."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ...config import PAPER_PRESETS, PredictConfig, RunConfig, preset

# fast-path variants: name -> PredictConfig overrides
VARIANT_FLAGS = {
    "channels_last": {"channels_last": True},
    "compile": {"compile": "default"},
    "compile-max-autotune": {"compile": "max-autotune"},
    "cudagraphs": {"compile": "reduce-overhead"},  # torch.compile with CUDA-graph capture
}


def variant_overrides(name: str) -> dict:
    """ "default", or flags joined by '+': "channels_last+cudagraphs"."""
    if name == "default":
        return {}
    out: dict = {}
    for part in name.split("+"):
        if part not in VARIANT_FLAGS:
            raise ValueError(f"unknown fast-path variant {part!r}: use default or {', '.join(VARIANT_FLAGS)}")
        out.update(VARIANT_FLAGS[part])
    return out


def first_compiled_mode(variants: list[str]) -> str | None:
    """The compile mode of the first compiled variant of `variants`, None when all are eager."""
    return next((m for m in (variant_overrides(v).get("compile") for v in variants) if m), None)


@dataclass
class Protocol:
    generations: int = PredictConfig.generations  # the paper's protocol: 30 generations x 100 = T DDPM steps
    sampling_steps: int = 100  # the sampling chain's length (--steps)
    sampler: str = PredictConfig.sampler
    variance: str = PredictConfig.variance
    timed_sampling_steps: int = 20  # sampling steps actually run per timed call (both paths); scaled to
    # sampling_steps (--measure-steps)
    reference_generations: int | None = None  # generations actually run by the reference (None = all)
    repeats: int = 3  # timed calls per path (median reported), after `warmup` untimed calls
    warmup: int = 1
    batch_generations: int | None = None  # None = the preset's predict.batch_generations
    variants: list[str] = field(default_factory=lambda: ["default"])
    reference_batched: bool = False  # also time the authors' way with generations batched
    reference: bool = True
    train_steps: int = 10  # timed optimizer steps per training mode (after train_warmup untimed ones)
    train_warmup: int = 3
    train: bool = True
    train_compile: bool = False  # also time the training step under torch.compile (and its compile time)
    matmul_n: int | None = None  # None: 8192 on CUDA, 1024 on CPU
    quick: bool = False
    compile_times: bool = False  # cold and warm compile in fresh processes (compile_probe)
    compile_cache: str | None = None  # cache folder of the compiled variants (None: a fresh one per run)
    preset_default: bool = True  # also seconds per image at the preset's own default protocol
    profile: str | None = None  # folder: torch.profiler summary of the first preset's sampling steps

    def batch_for(self, cfg: RunConfig) -> int:
        """Generations per network batch of the fast path: --batch-generations, else the preset's."""
        return self.batch_generations or cfg.predict.batch_generations


def protocol_from_args(args) -> Protocol:
    """The Protocol of `segdiff benchmark`'s flags (--quick: a smoke run), checked: a bad value is a
    UserError naming its flag."""
    from ...errors import UserError

    proto = Protocol(generations=args.generations, sampling_steps=args.steps, sampler=args.sampler)
    if args.quick:
        # a smoke run: every number is still measured and scaled the same way, on less work
        proto = replace(
            proto,
            timed_sampling_steps=2,
            reference_generations=3,
            repeats=1,
            warmup=1,
            train_steps=2,
            train_warmup=1,
            quick=True,
        )
    if args.measure_steps is not None:
        proto.timed_sampling_steps = args.measure_steps
    if args.repeats is not None:
        proto.repeats = args.repeats
    if args.train_steps is not None:
        proto.train_steps = args.train_steps
    if args.reference_generations is not None:
        proto.reference_generations = args.reference_generations
    proto.batch_generations = args.batch_generations
    proto.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    proto.compile_times = args.compile_times
    proto.compile_cache = args.compile_cache
    proto.profile = args.profile
    proto.reference_batched = args.reference_batched
    proto.reference = not args.no_reference
    proto.train = not args.no_train
    proto.train_compile = args.train_compile
    for v in proto.variants:
        try:
            variant_overrides(v)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    T = min(preset(p).diffusion.steps for p in presets_of(args))
    checks = {
        "--generations": (proto.generations, proto.generations >= 1, "must be at least 1"),
        "--steps": (proto.sampling_steps, 1 <= proto.sampling_steps <= T, f"must be between 1 and T = {T}"),
        "--batch-generations": (args.batch_generations, (args.batch_generations or 1) >= 1, "must be at least 1"),
        "--repeats": (proto.repeats, proto.repeats >= 1, "must be at least 1"),
        "--train-steps": (proto.train_steps, proto.train_steps >= 1, "must be at least 1"),
        "--reference-generations": (
            proto.reference_generations,
            (proto.reference_generations or 1) >= 1,
            "must be at least 1",
        ),
    }
    for flag, (value, ok, problem) in checks.items():
        if not ok:
            raise UserError(f"{flag} {value}: {problem}")
    if not 1 <= proto.timed_sampling_steps <= proto.sampling_steps:
        raise UserError(
            f"--measure-steps {proto.timed_sampling_steps}: must be between 1 and --steps {proto.sampling_steps}"
        )
    return proto


def presets_of(args) -> list[str]:
    return args.preset or (["tiny"] if args.quick else list(PAPER_PRESETS))
