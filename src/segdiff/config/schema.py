"""The schema of a run: one dataclass per section of config.json, each field with its default, and the checks
of every value (`validate`, ConfigError naming the dotted key)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .choices import (
    AMP_MODES,
    BLENDS,
    COMPILE_MODES,
    CONDITIONINGS,
    ENCODERS,
    LR_SCHEDULES,
    PREDICT_MODES,
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    T_SAMPLINGS,
    TIME_EMBEDDINGS,
    VARIANCES,
    X0_OUTPUTS,
)
from .errors import ConfigError
from .migration import merge_dict, read_json
from .overrides import apply_overrides


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


@dataclass(frozen=True)
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
    # The ablation of paper section 5 (Table 4; model/fusion.py, docs/ablation.md). conditioning: "sum" (the
    # method, F(x_t) + G(I)), "concat" (variant one, [F(x_t), G(I)]), "image" (variant three: no encoder, I
    # concatenated to x_t), "inject" (variants four to six: G(I) added after E's inject_after-th downsampling
    # block, by stride-2 convs). encoder: G, "rrdb" (the method) or "hardnet" (variant two, FC-HarDNet-70).
    conditioning: str = "sum"
    encoder: str = "rrdb"
    inject_after: int = 1
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
        _one_of(self, prefix, "conditioning", CONDITIONINGS)
        _one_of(self, prefix, "encoder", ENCODERS)
        if self.conditioning == "inject":
            downs = len(self.channel_mult) - 1
            _check(
                1 <= self.inject_after <= downs,
                prefix + "inject_after",
                self.inject_after,
                f"must be between 1 and the network's {downs} downsampling blocks (one fewer than model.channel_mult)",
            )
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


@dataclass(frozen=True)
class DiffusionConfig:
    steps: int = 100  # T
    # "scaled": the authors' code, linear 1e-4..2e-2 scaled by 1000/T (1e-3..0.2 at T=100), which ends
    # near pure noise (sqrt(alpha_bar_T) ~ 0.0045). "paper": the paper's literal eq. 14, 1e-4..2e-2 at
    # any T, which at T=100 leaves sqrt(alpha_bar_T) ~ 0.60: x_T is far from the N(0, I) sampling starts from.
    schedule: str = "scaled"

    def validate(self, prefix: str = "diffusion.") -> None:
        _at_least(self, prefix, 1, "steps")
        _one_of(self, prefix, "schedule", SCHEDULES)


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class VolumeConfig:
    """3D cases of an nnU-Net v2 data set (docs/data.md, "Volumes"): the 2D model trains on their slices."""

    # the axis (0, 1, 2 of the stored array) slices are taken along; None = the axis of the largest median voxel
    # spacing of the training cases (the first on ties), set in config.json when training starts
    slice_axis: int | None = None
    # share of training draws taken among the slices that hold foreground (the rest among all slices, so
    # empty slices are still seen); nnU-Net oversamples foreground patches at 0.33
    foreground_fraction: float = 0.5
    # "auto": per channel from dataset.json's channel_names ("CT" -> ct, "noNorm" -> none, else zscore);
    # or one scheme for every channel: "zscore" (per case), "ct" (training foreground's 0.5-99.5 % clip and
    # statistics), "none"
    normalization: str = "auto"
    # per channel, as applied (set when training starts): {"channel", "scheme"} and for ct "low", "high", "mean", "std"
    intensity: tuple[dict, ...] | None = None
    cache_cases: int = 4  # cases held in memory at once (least recently used dropped first)

    def validate(self, prefix: str = "data.volume.") -> None:
        if self.slice_axis is not None:
            _check(self.slice_axis in (0, 1, 2), prefix + "slice_axis", self.slice_axis, "must be 0, 1, 2 or none")
        f = self.foreground_fraction
        _check(0 <= f <= 1, prefix + "foreground_fraction", f, "must be in [0, 1]")
        _one_of(self, prefix, "normalization", ("auto", "zscore", "ct", "none"))
        _at_least(self, prefix, 1, "cache_cases")


@dataclass(frozen=True)
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
    volume: VolumeConfig = field(default_factory=VolumeConfig)  # nnU-Net data sets of 3D cases only

    def validate(self, prefix: str = "data.") -> None:
        _at_least(self, prefix, 1, "size")
        _check(0 <= self.val_fraction < 1, prefix + "val_fraction", self.val_fraction, "must be in [0, 1)")
        for name in ("mean", "std"):  # the count per image channel is checked by RunConfig.validate
            v = getattr(self, name)
            _check(v is None or len(v) > 0, prefix + name, v, "expected one value per image channel, or none")
        if self.std:
            _check(min(self.std) > 0, prefix + "std", self.std, "must be positive")
        if self.classes is not None:
            from ..classset import ClassSet  # the classes' own checks (values, colours, ignore label)
            from ..errors import DataError

            try:
                ClassSet.from_config(self)
            except DataError as exc:
                raise ConfigError(prefix + "classes", None, str(exc).split(": ", 1)[-1], show_value=False) from None
        self.augment.validate(prefix + "augment.")
        self.volume.validate(prefix + "volume.")


@dataclass(frozen=True)
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
    budget_fixed_at: int | None = None  # set by the run when it fixes max_steps; --set refuses it (SET_BY_THE_RUN)
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
        _one_of(self, prefix, "compile", COMPILE_MODES)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
        from ..atomic import atomic_write_text

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
