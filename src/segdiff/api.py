"""The Python API: `SegDiff` holds a configured model and its schedule.

model = SegDiff.load("runs/my-run")
out = model.predict(image, generations=30, steps=100)   # image: [H, W, 3] in [0, 1], or [B, 3, H, W]
out.mask, out.prob, out.uncertainty                     # [B, H, W]

A facade: prediction is segdiff.predict.predictor.Predictor (`model.predictor`, one network with one set
of weights on one device), the training loss is segdiff.diffusion's, checkpoints are segdiff.checkpoint's.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from .checkpoint import state_dict_cpu, write_files
from .config import PredictConfig, RunConfig, preset
from .devices import default_device
from .diffusion.schedule import sample_timestep
from .model import build_network
from .predict.predictor import Prediction, Predictor
from .train.step import LossModule

__all__ = ["Prediction", "Predictor", "SegDiff"]


class SegDiff:
    """A run's model: `config` (RunConfig), `net` (SegDiffUNet), `schedule`, `device`, and `weights_file`
    (where the weights were loaded from, None for new or in-memory weights). These attributes are the
    `predictor`'s: setting one (e.g. `model.net = other`) is seen by the next prediction."""

    def __init__(self, config: RunConfig | str = "tiny", device: torch.device | str | None = None):
        config = (preset(config) if isinstance(config, str) else config).validate()
        device = default_device(device)
        self.predictor = Predictor(config, build_network(config, device), device)

    # the predictor's state, readable and settable here
    config = property(lambda self: self.predictor.config, lambda self, v: setattr(self.predictor, "config", v))
    net = property(lambda self: self.predictor.net, lambda self, v: setattr(self.predictor, "net", v))
    device = property(lambda self: self.predictor.device, lambda self, v: setattr(self.predictor, "device", v))
    schedule = property(lambda self: self.predictor.schedule, lambda self, v: setattr(self.predictor, "schedule", v))
    weights_file = property(
        lambda self: self.predictor.weights_file, lambda self, v: setattr(self.predictor, "weights_file", v)
    )

    @property
    def compile_decision(self):
        """The last compile="auto" decision (segdiff.predict.compiling.CompileDecision)."""
        return self.predictor.compile_decision

    @property
    def classes(self):
        """The ClassSet of a multi-class model (names, values, colours, ignore label), None for binary."""
        return self.predictor.classes

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> per-channel normalised with the training set's statistics."""
        return self.predictor.normalize(image)

    # -- training -------------------------------------------------------------------------------
    def loss(
        self,
        image,
        mask,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Eq. 18 for a batch: image [B, C, H, W] in [0, 1], mask [B, 1, H, W] (or [B, H, W]) binary; for a
        K-class model the mask holds class indices 0..K-1 (any other value, e.g. 255, is ignored).
        t [B] (default: drawn by the run's `train.t_sampling`, as `segdiff train` draws them) and eps (default:
        standard normal) from `generator` when given."""
        image = self.predictor.image_batch(image)
        mask = torch.as_tensor(mask, device=self.device)
        if mask.dim() == 3:
            mask = mask[:, None]
        valid = None
        K = self.config.model.mask_channels
        if K > 1:
            label = mask[:, 0].long()
            valid = ((label >= 0) & (label < K)).float()[:, None]
            x0 = torch.nn.functional.one_hot(label.clamp(0, K - 1), K).permute(0, 3, 1, 2).float()
            x0 = (x0 * 2 - 1) * valid
        else:
            x0 = (mask.float() > 0.5).float() * 2 - 1
        n = x0.shape[0]
        if t is None:  # drawn as the training loop draws them: train.t_sampling (uniform or high_noise), p_t_max
            T, tc = len(self.schedule), self.config.train
            t = torch.tensor([sample_timestep(T, tc.t_sampling, generator, tc.p_t_max) for _ in range(n)])
            t = t.to(self.device)
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator).to(self.device)
        # the training step's own loss module: the run's prediction target and its loss levers (x0 logits with
        # the segmentation loss, their weights); a self-conditioned network gets a zero x0 input here, and
        # staged training's one-pass phase (a function of the step) is the training loop's
        loss_fn = LossModule(self.net, self.schedule, self.config)
        return loss_fn(image, x0, t.to(self.device), eps.to(self.device), valid)

    # -- prediction (segdiff.predict.predictor.Predictor) ---------------------------------------
    def sampling_options(self, base: PredictConfig | None = None, **overrides) -> PredictConfig:
        """The prediction protocol: `base` (default: the config's `predict` section) with `overrides`
        (PredictConfig fields; None = keep; `steps` = `sampling_steps`), validated for this model."""
        return self.predictor.sampling_options(base, **overrides)

    def network_calls(self, height: int, width: int, batch: int = 1, opts: PredictConfig | None = None) -> int:
        """How many network calls `predict` makes for `batch` images of height x width under `opts`."""
        return self.predictor.network_calls(height, width, batch, opts)

    def network_inputs(self, shape: tuple[int, int], opts: PredictConfig) -> tuple[tuple[int, int], int]:
        """The network input size and the number of inputs (1, or the windows) for an image of `shape`."""
        return self.predictor.network_inputs(shape, opts)

    def resolve_compile(self, opts: PredictConfig, shapes: list[tuple[int, int]], repeats: int = 1) -> PredictConfig:
        """`opts` with compile="auto" resolved for images of `shapes`, each sampled `repeats` times."""
        return self.predictor.resolve_compile(opts, shapes, repeats)

    def predict_x0(self, *args, **kwargs) -> torch.Tensor:
        return self.predictor.sample_generations(*args, **kwargs)

    # the signature and documentation of Predictor.sample_generations, under this method's own name
    predict_x0 = functools.update_wrapper(predict_x0, Predictor.sample_generations, updated=())
    predict_x0.__name__, predict_x0.__qualname__ = "predict_x0", "SegDiff.predict_x0"

    @functools.wraps(Predictor.predict)
    def predict(self, *args, **kwargs) -> Prediction:
        return self.predictor.predict(*args, **kwargs)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors (the weights this object predicts with)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / "config.json")
        write_files({directory / "model.safetensors": (state_dict_cpu(self.net), {"format": "segdiff"})})

    @classmethod
    def load(cls, directory: str | Path, weights: str = "best", device: torch.device | str | None = None) -> SegDiff:
        """Load a run folder. weights: "best" (best on validation; when the run has none yet, ema, then raw),
        "ema", "raw". A damaged weights file is a CheckpointError naming it (no fall-back to other weights)."""
        return cls.from_predictor(Predictor.from_run(directory, weights, device))

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> SegDiff:
        """The facade over an existing Predictor (its network and weights are shared, not copied)."""
        model = cls.__new__(cls)
        model.predictor = predictor
        return model
