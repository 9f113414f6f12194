"""Typed configuration of a run, and the named presets of the paper.

A run is one `RunConfig`; it is written as config.json beside the weights and read back by
`SegDiff.load`. Presets are named configs, not code paths. Every field can be set from a JSON file
(`segdiff train --config FILE`) or the command line (`--set data.size=64 model.channel_mult=1,2,2`):
`apply_overrides` parses and type-checks dotted keys, `RunConfig.validate` checks the values. Configs
are never changed in place: overrides build a new one with `dataclasses.replace`.

`PredictConfig` is the whole prediction protocol (generations, sampling steps, sampler, variance,
windows, precision, seed); `segdiff.predict.ensemble.SamplingOptions` is another name for it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, UserError

SAMPLERS = ("ddpm", "ddim", "dpm++")
VARIANCES = ("large", "small")
PREDICT_MODES = ("resize", "tile", "pad")
BLENDS = ("uniform", "gaussian")
AMP_MODES = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")
SCHEDULES = ("scaled", "paper")
TIME_EMBEDDINGS = ("sinusoidal", "learned")
PREDICTIONS = ("eps", "x0", "onepass")
LR_SCHEDULES = ("constant", "cosine", "linear")
T_SAMPLINGS = ("uniform", "high_noise")
X0_OUTPUTS = ("direct", "logits")
TRAIN_COMPILE = ("off", "auto", *COMPILE_MODES[1:])


class ConfigError(UserError):
    """A config value that is unknown, of the wrong type or out of range: `key` (dotted), `value`, `problem`."""

    def __init__(self, key: str, value: Any, problem: str, show_value: bool = True):
        self.key, self.value, self.problem = key, value, problem
        super().__init__(f"{key} = {_show(value)}: {problem}" if show_value else f"{key}: {problem}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def _check(ok: bool, key: str, value: Any, problem: str) -> None:
    if not ok:
        raise ConfigError(key, value, problem)


def _at_least(section: Any, prefix: str, minimum: float, *names: str, optional: bool = False) -> None:
    for name in names:
        v = getattr(section, name)
        if optional and v is None:
            continue
        _check(v is not None and v >= minimum, prefix + name, v, f"must be at least {minimum}")


def _one_of(section: Any, prefix: str, name: str, choices: tuple[str, ...]) -> None:
    v = getattr(section, name)
    _check(v in choices, prefix + name, v, f"choose one of {', '.join(choices)}")


def chain_length(sampling_steps: int | None, T: int) -> int:
    """The number of sampling steps K actually walked: `sampling_steps`, or all T when unset (Algorithm 1).

    Names used throughout: T (`diffusion.steps`) is the diffusion's length; K (`predict.sampling_steps`,
    `train.val_sampling_steps`) the sampling chain's; `step` / `max_steps` count optimizer steps."""
    return T if sampling_steps is None else sampling_steps


@dataclass
class ModelConfig:
    """eps_theta(x_t, I, t) = D(E(F(x_t) + G(I), t), t) (paper eq. 17)."""

    image_channels: int = 3  # set from the training images (grey 1, RGB/RGBA 3, multi-channel TIFF C)
    # 1: the paper's binary mask; K > 1: K one-hot class channels in [-1, 1] (set from the data's classes)
    mask_channels: int = 1
    model_channels: int = 128  # C
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 3  # per encoder level; the decoder has one more (improved-diffusion)
    # Attention after the residual blocks of the levels with these downsampling factors, fixed here so
    # that a larger input does not create huge attention maps (16x16 and 8x8 at the training size).
    attention_ds: tuple[int, ...] = (8, 16)
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 32
    rrdb_blocks: int = 15  # G: number of RRDB blocks
    rrdb_nf: int = 64  # G: trunk width
    rrdb_gc: int = 32  # G: dense-block growth channels
    time_embedding: str = "sinusoidal"  # "sinusoidal" (authors' code) or "learned" (paper's look-up table)
    # What the network outputs: "eps" (the paper: eps_theta, MSE to the noise, eq. 18), "x0" (the network
    # outputs x0 and is trained with the MSE to x0; the samplers convert it to eps, one code path), or
    # "onepass" (NOT diffusion: the baseline segmenter, logits = net(x_t = 0, t = 0, G(I)), BCE + soft Dice,
    # one deterministic map per image; see docs/results.md).
    prediction: str = "eps"
    # -- issue 20 levers (defaults = the earlier behaviour) --
    # How an x0 network's output becomes x0: "direct" (the output is x0) or "logits" (x0 = 2 sigmoid(z) - 1
    # for a binary mask, 2 softmax(z) - 1 over the K class channels), so that a segmentation loss can be
    # put on the logits (train.seg_loss_weight); the samplers still see x0 (and eps through eps_from_x0).
    x0_output: str = "direct"
    # Self-conditioning (Chen, Zhang and Hinton 2022): F also receives the previous x0 estimate (M more
    # input channels; zeros when there is none), the previous sampling step's x0 at prediction.
    self_condition: bool = False

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this; predict pads to it."""
        return 2 ** (len(self.channel_mult) - 1)

    def validate(self, prefix: str = "model.") -> None:
        _at_least(self, prefix, 1, "image_channels", "model_channels", "num_res_blocks", "num_heads", "norm_groups")
        _at_least(self, prefix, 1, "rrdb_blocks", "rrdb_nf", "rrdb_gc")
        key = prefix + "channel_mult"
        _check(len(self.channel_mult) > 0, key, self.channel_mult, "give at least one multiplier")
        _check(min(self.channel_mult) >= 1, key, self.channel_mult, "multipliers must be at least 1")
        key = prefix + "attention_ds"
        _check(all(d >= 1 for d in self.attention_ds), key, self.attention_ds, "factors must be at least 1")
        _check(0 <= self.dropout < 1, prefix + "dropout", self.dropout, "must be in [0, 1)")
        _one_of(self, prefix, "time_embedding", TIME_EMBEDDINGS)
        _one_of(self, prefix, "prediction", PREDICTIONS)
        _one_of(self, prefix, "x0_output", X0_OUTPUTS)
        if self.x0_output == "logits" or self.self_condition:
            key = prefix + ("x0_output" if self.x0_output == "logits" else "self_condition")
            _check(
                self.prediction != "onepass",
                key,
                getattr(self, key[len(prefix) :]),
                "needs a diffusion model (model.prediction eps or x0), not the one-pass baseline",
            )
        if self.x0_output == "logits":
            _check(self.prediction == "x0", prefix + "x0_output", self.x0_output, "needs model.prediction = x0")
        # attention levels (and the middle block, at the last level) split their channels over the heads
        ds_of_level = [2**i for i in range(len(self.channel_mult))]
        for ds, mult in zip(ds_of_level, self.channel_mult):
            ch = mult * self.model_channels
            if (ds in self.attention_ds or ds == ds_of_level[-1]) and ch % self.num_heads:
                raise ConfigError(
                    prefix + "num_heads",
                    self.num_heads,
                    f"must divide the {ch} channels of the attention at downsampling factor {ds}",
                )


@dataclass
class DiffusionConfig:
    steps: int = 100  # T
    # "scaled": the authors' code, linear 1e-4..2e-2 scaled by 1000/T (1e-3..0.2 at T=100), which ends
    # near pure noise (sqrt(alpha_bar_T) ~ 0.0045). "paper": the paper's literal eq. 14, 1e-4..2e-2 at
    # any T, which at T=100 leaves sqrt(alpha_bar_T) ~ 0.60: x_T is far from the N(0, I) sampling starts from.
    schedule: str = "scaled"

    def validate(self, prefix: str = "diffusion.") -> None:
        _at_least(self, prefix, 1, "steps")
        _one_of(self, prefix, "schedule", SCHEDULES)


@dataclass
class AugmentConfig:
    """Joint image/mask augmentation (the same geometry for both)."""

    crop: int | None = None  # random crop of this size after the geometric transform (MoNuSeg: 256)
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0  # maximum absolute rotation in degrees (180 = any angle)
    hflip: bool = False
    vflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0

    def validate(self, prefix: str = "data.augment.") -> None:
        _at_least(self, prefix, 1, "crop", optional=True)
        lo, hi = self.scale
        _check(0 < lo <= hi, prefix + "scale", self.scale, "expected MIN,MAX with 0 < MIN <= MAX")
        _at_least(self, prefix, 0, "rotate", "brightness", "contrast", "saturation", "hue")
        _check(self.hue <= 0.5, prefix + "hue", self.hue, "must be at most 0.5")


@dataclass
class DataConfig:
    size: int = 128  # the network's input size: training size (unless cropped) and predict's window
    val_fraction: float = 0.1  # held out of train when ROOT/val is absent
    mean: tuple[float, ...] | None = None  # per-channel image normalisation, set from train data
    std: tuple[float, ...] | None = None
    # Multi-class data (docs/data.md): None = binary masks (the paper's model). Otherwise the classes in
    # label order, each {"name", "value" (mask value or None), "color" [r, g, b]}, from ROOT/classes.json or
    # a scan of the masks; pixels whose mask value (ignore_value) or colour (ignore_color) is the ignore
    # label count in no loss and no metric.
    classes: tuple[dict, ...] | None = None
    ignore_value: int | None = None
    ignore_color: tuple[int, int, int] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self, prefix: str = "data.") -> None:
        _at_least(self, prefix, 1, "size")
        _check(0 <= self.val_fraction < 1, prefix + "val_fraction", self.val_fraction, "must be in [0, 1)")
        for name in ("mean", "std"):  # the count per image channel is checked by RunConfig.validate
            v = getattr(self, name)
            _check(v is None or len(v) > 0, prefix + name, v, "expected one value per image channel, or none")
        if self.std:
            _check(min(self.std) > 0, prefix + "std", self.std, "must be positive")
        if self.classes is not None:
            from .classset import ClassSet  # the classes' own checks (values, colours, ignore label)
            from .errors import DataError

            try:
                ClassSet.from_config(self)
            except DataError as exc:
                raise ConfigError(prefix + "classes", None, str(exc).split(": ", 1)[-1], show_value=False) from None
        self.augment.validate(prefix + "augment.")


@dataclass
class TrainConfig:
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 = no clipping
    max_steps: int = 100_000
    max_minutes: float | None = None  # stop after this wall time (benchmarks), then save
    ema_rate: float = 0.9999  # 0 = no averaging (the EMA weights are the raw weights; validated once)
    warmup_steps: int = 0  # linear learning-rate warm-up
    log_every: int = 50
    val_every: int = 2000  # 0 = only at the end
    save_every: int = 1000  # 0 = only at the end
    val_generations: int = 4
    val_sampling_steps: int | None = None  # the sampling chain at validation (None = T)
    val_max_images: int | None = 16  # None or 0 = all
    seed: int = 0
    num_workers: int = 0
    # Learning rate after the warm-up: "constant" (the paper), or "cosine" / "linear" decay from lr to lr_min
    # at max_steps. Follows the step count only, so a resumed run is bitwise the same (segdiff.train.schedule).
    lr_schedule: str = "constant"
    lr_min: float = 0.0
    # Timestep distribution of training: "uniform" (Algorithm 2) or "high_noise": t = floor(T * sqrt(u)),
    # u ~ U[0, 1), i.e. P(t) = (2t + 1) / T^2 (t = 0..T-1), linearly more weight on noisier steps (mean ~2T/3).
    t_sampling: str = "uniform"
    # Time budget of the training steps, in minutes (compile and warm-up included, validation excluded): the
    # throughput measured over steps budget_warmup_steps .. budget_warmup_steps + budget_probe_steps is turned
    # ONCE into a fixed max_steps, written to config.json (budget_fixed_at = that step) and kept on resume;
    # if the budget is spent before the probe ends, max_steps is fixed at the current step.
    budget_minutes: float | None = None
    budget_warmup_steps: int = 5
    budget_probe_steps: int = 20
    budget_fixed_at: int | None = None  # set by the run when it fixes max_steps; never set it by hand
    # torch.compile of the training step's forward/backward: "off", "auto" (on CUDA when the run is long
    # enough to repay the compile time, see segdiff.train.schedule.should_compile), "default",
    # "reduce-overhead", "max-autotune".
    compile: str = "off"
    # a step whose loss or gradient is NaN/Inf: stop with an error naming it (False) or skip it, counted in the log
    skip_nonfinite: bool = False
    # -- issue 20 levers (defaults = the earlier behaviour) --
    # The x0 network's loss: mse_loss_weight x MSE(x0) + seg_loss_weight x (BCE + soft Dice; cross-entropy
    # + soft Dice for K classes) on its logits (seg_loss_weight > 0 needs model.x0_output = logits).
    mse_loss_weight: float = 1.0
    seg_loss_weight: float = 0.0
    # model.self_condition: the fraction of training samples whose x0 input is first made by a no-grad pass
    self_condition_prob: float = 0.5
    # Staged training: the first onepass_steps steps train the same network as a one-pass segmenter (x_t = 0
    # at t = T - 1, its own loss), the rest as the diffusion model; counted in max_steps. onepass_fraction:
    # the same as a share of max_steps (of the max_steps a budget fixes; every step before the fix is one-pass),
    # so a resumed run that changes max_steps moves the boundary (use onepass_steps for a fixed count).
    onepass_steps: int = 0
    onepass_fraction: float = 0.0
    # Probability that a training timestep is t = T - 1 (where the x0 model is a one-pass segmenter that
    # also sees noise) instead of a draw from t_sampling.
    p_t_max: float = 0.0

    def validate(self, T: int, prefix: str = "train.") -> None:
        _at_least(self, prefix, 1, "batch_size", "max_steps", "log_every", "val_generations")
        _at_least(self, prefix, 0, "weight_decay", "grad_clip", "warmup_steps", "val_every", "save_every")
        _at_least(self, prefix, 0, "num_workers")
        _at_least(self, prefix, 0, "val_max_images", optional=True)
        _check(self.lr > 0, prefix + "lr", self.lr, "must be positive")
        _check(0 <= self.ema_rate <= 1, prefix + "ema_rate", self.ema_rate, "must be in [0, 1]")
        if self.max_minutes is not None:
            _check(self.max_minutes > 0, prefix + "max_minutes", self.max_minutes, "must be positive (or none)")
        if self.val_sampling_steps is not None:
            k, v = prefix + "val_sampling_steps", self.val_sampling_steps
            _check(1 <= v <= T, k, v, f"must be between 1 and T = {T}")
        _one_of(self, prefix, "lr_schedule", LR_SCHEDULES)
        _one_of(self, prefix, "t_sampling", T_SAMPLINGS)
        _one_of(self, prefix, "compile", TRAIN_COMPILE)
        _check(0 <= self.lr_min <= self.lr, prefix + "lr_min", self.lr_min, "must be in [0, train.lr]")
        if self.budget_minutes is not None:
            k, v = prefix + "budget_minutes", self.budget_minutes
            _check(v > 0, k, v, "must be positive (or none)")
        _at_least(self, prefix, 0, "budget_warmup_steps", "budget_probe_steps")
        _at_least(self, prefix, 0, "budget_fixed_at", optional=True)
        _at_least(self, prefix, 0, "mse_loss_weight", "seg_loss_weight", "onepass_steps")
        _check(
            self.mse_loss_weight + self.seg_loss_weight > 0,
            prefix + "seg_loss_weight",
            self.seg_loss_weight,
            "mse_loss_weight and seg_loss_weight cannot both be 0",
        )
        _check(
            not (self.onepass_steps and self.onepass_fraction),
            prefix + "onepass_fraction",
            self.onepass_fraction,
            "give onepass_steps or onepass_fraction, not both",
        )
        for name in ("self_condition_prob", "p_t_max", "onepass_fraction"):
            v = getattr(self, name)
            _check(0 <= v <= 1, prefix + name, v, "must be in [0, 1]")


@dataclass
class PredictConfig:
    """The prediction protocol: multiple generations (paper 4.1) and how each is sampled.

    The paper's protocol is the default: 30 generations x all T DDPM steps with the large variance.
    """

    generations: int = 30
    sampling_steps: int | None = None  # K <= T respaced steps; None = T (Algorithm 1), see `steps_for`
    sampler: str = "ddpm"  # ddpm | ddim | dpm++
    # DDPM reverse-process variance: "large" = beta_t (what the authors' code ran for the paper's tables,
    # improved-diffusion's FIXED_LARGE), "small" = beta-tilde_t (paper eq. 13). Used by ddpm only.
    variance: str = "large"
    eta: float = 0.0  # DDIM stochasticity (0 = deterministic). Used by ddim only.
    clip_x0: bool = True  # clip the predicted x0 to [-1, 1] inside each step (authors' code)
    # Images of another size than data.size: "resize" to size x size and back, "tile" with size x size
    # windows (stride tile_stride), or "pad" to the network's stride and crop back.
    mode: str = "resize"
    tile_stride: int | None = None  # None = data.size (non-overlapping windows, the MoNuSeg quadrant protocol)
    blend: str = "uniform"  # weights of overlapping windows: "uniform" or "gaussian" (lower at borders)
    batch_generations: int = 30  # generations x windows per network batch (memory)
    amp: str = "auto"  # "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp16", "fp32"
    # Speed flags (`segdiff benchmark --variants`); channels_last is off until measured faster on a GPU:
    channels_last: bool = False  # convert the network's weights to channels-last (in place, idempotent)
    # torch.compile the noise predictor: "auto" (CUDA: compile when the work ahead repays the compile time,
    # segdiff.predict.compiling; CPU: eager), "off", "default", "reduce-overhead" (CUDA graphs), "max-autotune"
    compile: str = "auto"
    # folder of the persistent compile caches; None = $SEGDIFF_CACHE_DIR or ~/.cache/segdiff/inductor
    compile_cache: str | None = None
    seed: int = 0  # the noise of generation k of an image is keyed by (seed, image key, k)
    # -- issue 20 lever (default = the earlier behaviour) --
    # None: the chain starts from pure noise at t = T - 1. t: one network pass at T - 1 gives a first x0,
    # noised to timestep t (q_sample), and the K sampling steps walk t .. 0 from there (K + 1 network calls).
    start_t: int | None = None

    def steps_for(self, T: int) -> int:
        """The sampling steps K walked with a model of T diffusion steps (sampling_steps, or T when unset)."""
        return chain_length(self.sampling_steps, T if self.start_t is None else self.start_t + 1)

    @property
    def steps(self) -> int | None:
        """Earlier name of `sampling_steps` (read only)."""
        return self.sampling_steps

    def validate(self, T: int | None = None, size: int | None = None, prefix: str = "predict.") -> None:
        """T: the model's diffusion steps (bounds sampling_steps); size: its window (bounds tile_stride)."""
        _at_least(self, prefix, 1, "generations", "batch_generations")
        if self.sampling_steps is not None:
            k = prefix + "sampling_steps"
            _check(self.sampling_steps >= 1, k, self.sampling_steps, "must be at least 1 (or none = T)")
            if T is not None:
                _check(self.sampling_steps <= T, k, self.sampling_steps, f"must be at most T = {T}")
        if self.start_t is not None:
            k, v = prefix + "start_t", self.start_t
            _check(v >= 0 and (T is None or v < T - 1), k, v, "must be a timestep below T - 1 (or none)")
            K = self.sampling_steps
            _check(K is None or K <= v + 1, prefix + "sampling_steps", K, f"must be at most start_t + 1 = {v + 1}")
        _one_of(self, prefix, "sampler", SAMPLERS)
        _one_of(self, prefix, "variance", VARIANCES)
        _check(self.eta >= 0, prefix + "eta", self.eta, "must be at least 0")
        _one_of(self, prefix, "mode", PREDICT_MODES)
        _one_of(self, prefix, "blend", BLENDS)
        _one_of(self, prefix, "amp", AMP_MODES)
        _one_of(self, prefix, "compile", COMPILE_MODES)
        if self.tile_stride is not None:
            top = f"the window size data.size = {size}" if size is not None else "the window size"
            ok = self.tile_stride >= 1 and (size is None or self.tile_stride <= size)
            _check(ok, prefix + "tile_stride", self.tile_stride, f"must be between 1 and {top}")

    def check_explicit(self, keys, prefix: str = "predict.") -> None:
        """Refuse options given explicitly (`keys`) that the chosen sampler does not use."""
        users = {"eta": ("ddim",), "variance": ("ddpm",)}
        for name, samplers in users.items():
            if name in keys and self.sampler not in samplers:
                raise ConfigError(
                    prefix + name,
                    getattr(self, name),
                    f"the {self.sampler} sampler does not use {name} (only {', '.join(samplers)} does)",
                )

    def override(
        self, overrides: dict[str, Any], T: int | None = None, size: int | None = None, text: bool = False
    ) -> PredictConfig:
        """A new, validated PredictConfig with `overrides` (field name -> value; None = keep).

        `steps` is accepted for `sampling_steps`. Values are type-checked (text=True: command-line strings);
        an option the chosen sampler does not use is refused.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if "steps" in given:
            if "sampling_steps" in given:
                raise ConfigError("predict.steps", given["steps"], "give steps or sampling_steps, not both")
            given["sampling_steps"] = given.pop("steps")
        out = apply_overrides(self, given, prefix="predict.", text=text)
        out.validate(T, size)
        out.check_explicit(given)
        return out


@dataclass
class RunConfig:
    preset: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def validate(self) -> RunConfig:
        """Check every value (ConfigError naming the dotted key); returns self."""
        self.model.validate()
        self.diffusion.validate()
        self.data.validate()
        T, stride = self.diffusion.steps, self.model.stride
        self.train.validate(T)
        self.predict.validate(T, self.data.size)
        for key, v in (("data.size", self.data.size), ("data.augment.crop", self.data.augment.crop)):
            if v is not None:
                _check(
                    v % stride == 0, key, v, f"must be a multiple of the network stride {stride} (model.channel_mult)"
                )
        for key in ("data.mean", "data.std"):
            v = getattr(self.data, key[5:])
            n = self.model.image_channels
            _check(v is None or len(v) == n, key, v, f"expected {n} values (model.image_channels)")
        if self.train.seg_loss_weight > 0:
            v = self.train.seg_loss_weight
            _check(self.model.x0_output == "logits", "train.seg_loss_weight", v, "needs model.x0_output = logits")
        k = 1 if not self.data.classes else len(self.data.classes)
        _check(
            self.model.mask_channels == k,
            "model.mask_channels",
            self.model.mask_channels,
            f"must be {k}: 1 for binary masks, else the number of classes in data.classes",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from .atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        """A config from a (possibly partial) dict; fields it lacks keep their defaults."""
        return merge_dict(cls(), d, source)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """Read a run's config.json (any earlier segdiff format: old keys are migrated) and validate it."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: config.json not found; is this a segdiff run folder?")
        cfg = cls.from_dict(read_json(path, CheckpointError), str(path))
        try:
            return cfg.validate()
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None


# -- overrides: dotted keys from the command line, a file or Python ------------------------------------

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def field_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config class (RunConfig by default), sections expanded."""
    cls = cls or RunConfig
    keys = []
    for name, tp in _hints(cls).items():
        keys += field_keys(tp, f"{prefix}{name}.") if _is_section(tp) else [prefix + name]
    return keys


def parse_value(text: str, tp: Any, key: str) -> Any:
    """Command-line text -> a value of type `tp` (int, float, bool, str, tuples, `X | None`)."""
    return _coerce(text, tp, key, text=True)


def _coerce(value: Any, tp: Any, key: str, text: bool) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (text and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, text)
    if value is None or (text and value.strip().lower() in _NONE and tp is not str):
        raise ConfigError(key, value, "cannot be none")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(key, value, "expected true or false")
    if tp is int:
        if text:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(key, value, "expected an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "expected an integer")
        return value
    if tp is float:
        if text:
            try:
                return float(value)
            except ValueError:
                raise ConfigError(key, value, "expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "expected a string")
        return value
    if tp is dict:  # data.classes entries: set from classes.json or config files, not from text
        if text or not isinstance(value, dict):
            raise ConfigError(key, value, "set the classes with a classes.json in the data root (docs/data.md)")
        return dict(value)
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        elem = args[0]
        what = f"{'' if variadic else len(args)} {'integers' if elem is int else 'numbers'}".strip()
        if text:
            body = value.strip().strip("()[]")
            items = [v.strip() for v in body.split(",")] if body.strip() else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(key, value, f"expected {what} separated by commas")
        if not variadic and len(items) != len(args):
            raise ConfigError(key, value, f"expected {what} separated by commas")
        try:
            return tuple(_coerce(v, elem, key, text) for v in items)
        except ConfigError:
            raise ConfigError(key, value, f"expected {what} separated by commas") from None
    raise ConfigError(key, value, f"cannot set a field of type {tp}")  # pragma: no cover - no such field


def _unknown(key: str, prefix: str, root: tuple[type, str]) -> ConfigError:
    """The error for an unknown key (`prefix` + `key`), naming the closest key of the config `root` (class,
    prefix) where the override started."""
    full = prefix + key
    if full in OLD_KEYS:
        return ConfigError(full, None, f"this setting is now {OLD_KEYS[full]}", show_value=False)
    known = field_keys(*root)
    leaf = full.rsplit(".", 1)[-1]  # a right field name in the wrong section: data.channel_mult -> model.channel_mult
    close = [k for k in known if k.rsplit(".", 1)[-1] == leaf][:1]
    close = close or difflib.get_close_matches(full, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else f"settable keys start with {', '.join(_hints(root[0]))}"
    return ConfigError(full, None, f"unknown setting; {hint}", show_value=False)


def apply_overrides(
    obj: Any, overrides: dict[str, Any], prefix: str = "", text: bool = False, _root: tuple | None = None
) -> Any:
    """A copy of the config dataclass `obj` with dotted `overrides` set (values type-checked).

    text=True parses command-line strings ("64", "1,2,2", "none", "true"); otherwise values are JSON-like
    (lists for tuples). `obj` is not changed. Keys are relative to `obj`; `prefix` only names them in errors.
    """
    root = _root or (type(obj), prefix)
    nested: dict[str, dict[str, Any]] = {}
    direct: dict[str, Any] = {}
    hints = _hints(type(obj))
    for key, value in overrides.items():
        name, _, rest = key.partition(".")
        if name not in hints:
            raise _unknown(key, prefix, root)
        tp = hints[name]
        if _is_section(tp):
            if not rest:
                sub = ", ".join(field_keys(tp, f"{prefix}{name}.")[:4])
                raise ConfigError(prefix + key, value, f"is a section; set its fields, e.g. {sub}")
            nested.setdefault(name, {})[rest] = value
        elif rest:
            raise _unknown(key, prefix, root)
        else:
            direct[name] = _coerce(value, tp, prefix + key, text)
    for name, sub in nested.items():
        direct[name] = apply_overrides(getattr(obj, name), sub, f"{prefix}{name}.", text, root)
    return dataclasses.replace(obj, **direct)


def parse_assignments(items: list[str], prefix: str = "") -> dict[str, str]:
    """["data.size=64", "model.channel_mult=1,2,2"] -> {"data.size": "64", ...} (values still text)."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. data.size=64")
        key = key.removeprefix(prefix) if prefix else key
        if key in out and out[key] != value:
            raise UserError(f"--set {key}: given twice ({out[key]} and {value})")
        out[key] = value
    return out


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A config (or a nested dict) -> {dotted key: leaf value}."""
    if dataclasses.is_dataclass(d):
        d = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) or dataclasses.is_dataclass(v):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


# Settings that moved in the config format (old dotted key -> new), applied when reading a file.
OLD_KEYS = {
    "diffusion.variance": "predict.variance",
    "diffusion.clip_x0": "predict.clip_x0",
    "data.predict_mode": "predict.mode",
    "data.tile_stride": "predict.tile_stride",
    "data.tile_blend": "predict.blend",
    "predict.steps": "predict.sampling_steps",
    "train.val_steps": "train.val_sampling_steps",
}


def migrate(flat: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Rename the keys of earlier formats (OLD_KEYS) in a flattened config dict."""
    out = dict(flat)
    for old, new in OLD_KEYS.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise UserError(f"{source}: {old} (earlier name of {new}) and {new} disagree; keep only {new}")
            out[new] = value
    return out


def merge_dict(base: RunConfig, d: dict[str, Any], source: str = "config") -> RunConfig:
    """`base` with the fields of a (possibly partial, possibly earlier-format) config dict set."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object of settings")
    try:
        return apply_overrides(base, migrate(flatten(d), source))
    except ConfigError as exc:
        raise UserError(f"{source}: {exc}") from None


def read_json(path: Path, error: type[UserError] = UserError) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON ({str(exc)[:200]}); the file is damaged or not JSON") from None


# -- resume: which settings may change in a running run ------------------------------------------------

# Length, cadence, time budget and data loading: they do not change what a step computes.
RESUMABLE = (
    "train.max_steps",
    "train.max_minutes",
    "train.log_every",
    "train.val_every",
    "train.save_every",
    "train.num_workers",
    "predict.compile",  # how validation runs the same network, not what a training step computes
    "predict.compile_cache",
    "train.skip_nonfinite",  # only steps whose loss or gradient is NaN/Inf act differently
)
_DERIVED = ("data.mean", "data.std")  # set from the training images when the run starts
# Decided by the data when the run starts (image channels, classes): a resumed run keeps the saved ones.
_FROM_DATA = ("model.image_channels", "model.mask_channels", "data.classes", "data.ignore_value", "data.ignore_color")


def resume_config(saved: RunConfig, requested: RunConfig | None) -> tuple[RunConfig, dict[str, tuple]]:
    """The config a resumed run continues with, and its changes {key: (old, new)}.

    Changes to anything but RESUMABLE are refused in one UserError naming them all. Derived fields
    left unset (None) in `requested` keep their saved values.
    """
    if requested is None:
        return saved, {}
    old, new = flatten(saved), flatten(requested)
    for k in _DERIVED:
        if new[k] is None:
            new[k] = old[k]
    for k in _FROM_DATA:
        new[k] = old[k]
    changes = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
    refused = [k for k in changes if k not in RESUMABLE]
    if refused:
        what = ", ".join(f"{k} {_show(changes[k][0])} -> {_show(changes[k][1])}" for k in refused)
        raise UserError(
            f"--resume: cannot change {what} in a running run (only {', '.join(RESUMABLE)} may change); "
            "leave them out, or start a new run with another --out"
        )
    return apply_overrides(saved, {k: v[1] for k, v in changes.items()}), changes


# -- presets ------------------------------------------------------------------------------------------


def _vaihingen() -> RunConfig:
    return RunConfig(
        preset="vaihingen",
        model=ModelConfig(channel_mult=(1, 1, 1, 2, 2, 4, 4), attention_ds=(16, 32), rrdb_blocks=6, dropout=0.1),
        data=DataConfig(
            size=256,
            augment=AugmentConfig(
                scale=(0.75, 1.5),
                rotate=180.0,
                hflip=True,
                vflip=True,
                brightness=0.6,
                contrast=0.5,
                saturation=0.4,
                hue=0.025,
            ),
        ),
        train=TrainConfig(batch_size=8, num_workers=4),
        predict=PredictConfig(mode="resize"),
    )


def _monuseg() -> RunConfig:
    return RunConfig(
        preset="monuseg",
        model=ModelConfig(channel_mult=(1, 1, 1, 2, 2, 4, 4), attention_ds=(16, 32), rrdb_blocks=12),
        data=DataConfig(
            size=256,
            augment=AugmentConfig(
                crop=256,
                scale=(0.75, 1.25),
                rotate=22.0,
                hflip=True,
                vflip=True,
                brightness=0.4,
                contrast=0.4,
                saturation=0.4,
                hue=0.1,
            ),
        ),
        train=TrainConfig(batch_size=8, num_workers=4),
        predict=PredictConfig(mode="tile"),  # the paper's protocol: 256 x 256 windows with stride 256 at 512
    )


def _cityscapes() -> RunConfig:
    return RunConfig(
        preset="cityscapes",
        model=ModelConfig(channel_mult=(1, 1, 2, 2, 4, 4), attention_ds=(8, 16), rrdb_blocks=15),
        data=DataConfig(size=128, augment=AugmentConfig(scale=(0.75, 1.25), rotate=22.0, hflip=True)),
        train=TrainConfig(batch_size=30, num_workers=4),
        predict=PredictConfig(mode="resize"),
    )


def _tiny() -> RunConfig:
    """Small enough to train on 2 CPU cores in minutes (the demo and the tests)."""
    return RunConfig(
        preset="tiny",
        model=ModelConfig(
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_ds=(4,),
            num_heads=4,
            norm_groups=8,
            rrdb_blocks=1,
            rrdb_nf=16,
            rrdb_gc=8,
        ),
        diffusion=DiffusionConfig(steps=100),
        data=DataConfig(size=32, augment=AugmentConfig(hflip=True, vflip=True)),
        train=TrainConfig(
            batch_size=16,
            lr=1e-3,
            ema_rate=0.999,
            warmup_steps=50,
            max_steps=1200,
            log_every=50,
            val_every=400,
            save_every=400,
            val_generations=4,
            val_sampling_steps=5,
        ),
        # variance, steps and generations: the cheapest setting within 0.5 IoU points of the paper's 30 x 100
        # on the demo model's validation images (`segdiff study`, docs/results.md)
        predict=PredictConfig(generations=10, sampling_steps=5, variance="small", mode="pad"),
    )


def _fast(cfg: RunConfig, name: str, lr: float, warmup: int, ema_rate: float) -> RunConfig:
    """The short-budget recipe of issue 9 on a preset's network and data: x0-prediction, timestep sampling
    weighted toward high noise, a constant lr after a warm-up (a cosine decay scored lower at equal steps), a
    short EMA; validation only at the end of training (a budget run's steps are fixed up front), on 4 images
    with few steps. Chosen on the MoNuSeg validation images with the tiny network on a CPU (docs/results.md,
    "Recipe for short budgets"). Issue 20 added: x0 as logits trained with the segmentation loss beside the
    MSE (BCE or cross-entropy + soft Dice), and staged training (the first half of the steps one-pass)."""
    cfg.preset = name
    cfg.model.prediction = "x0"
    cfg.model.x0_output = "logits"
    cfg.train.seg_loss_weight, cfg.train.onepass_fraction = 1.0, 0.5
    t = cfg.train
    t.lr, t.warmup_steps, t.ema_rate = lr, warmup, ema_rate
    t.t_sampling = "high_noise"
    t.val_every, t.val_generations, t.val_sampling_steps, t.val_max_images = 0, 4, 5, 4
    t.compile = "auto"
    cfg.predict = dataclasses.replace(cfg.predict, generations=4, sampling_steps=5, sampler="ddim")
    return cfg


def _monuseg_fast() -> RunConfig:
    """The paper's MoNuSeg network trained with the short-budget recipe (its GPU confirmation is pending)."""
    return _fast(_monuseg(), "monuseg-fast", lr=2e-4, warmup=50, ema_rate=0.995)


def _tiny_fast() -> RunConfig:
    return _fast(_tiny(), "tiny-fast", lr=1e-3, warmup=50, ema_rate=0.995)


PRESETS = {
    "cityscapes": _cityscapes,
    "vaihingen": _vaihingen,
    "monuseg": _monuseg,
    "tiny": _tiny,
    "monuseg-fast": _monuseg_fast,
    "tiny-fast": _tiny_fast,
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise UserError(f"--preset {name}: unknown preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
