"""The Python API: `SegDiff` holds a configured model and its schedule.

model = SegDiff.load("runs/my-run")
out = model.predict(image, generations=30, steps=100)   # image: [H, W, 3] in [0, 1], or [B, 3, H, W]
out.mask, out.prob, out.uncertainty                     # [B, H, W]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .config import PredictConfig, RunConfig, preset
from .data.io import to_unit_float
from .data.transforms import resize_image
from .diffusion import make_schedule, training_loss
from .errors import CheckpointError, UserError
from .memory import check_prediction
from .model import SegDiffUNet
from .predict import compiling
from .predict.ensemble import network_calls, pad_to_stride, sample_x0, summarise, summarise_classes
from .predict.tiling import Stitcher, blend_weight, windows
from .train.checkpoint import load_into, prev_path, read_weights, state_dict_cpu, write_files

WEIGHT_FILES = {"best": "best.safetensors", "ema": "ema.safetensors", "raw": "model.safetensors"}


@dataclass
class Prediction:
    """Binary: mask (bool), prob and uncertainty (std over generations): [B, H, W]; samples: [B, G, H, W]
    per-generation maps in [0, 1].

    K classes (a multi-class model): mask = the label, class indices int64 [B, H, W]; prob [B, K, H, W];
    uncertainty = entropy of the mean class distribution [B, H, W] (nats); disagreement [B, H, W] (fraction
    of generations whose argmax differs from the label); samples [B, G, K, H, W] (each generation's
    distribution). `classes` holds the class names in label order (None for binary).
    """

    mask: torch.Tensor
    prob: torch.Tensor
    uncertainty: torch.Tensor
    samples: torch.Tensor | None = None
    disagreement: torch.Tensor | None = None
    classes: tuple[str, ...] | None = None

    @property
    def label(self) -> torch.Tensor:
        return self.mask


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class SegDiff:
    def __init__(self, config: RunConfig | str = "tiny", device: torch.device | str | None = None):
        self.config = (preset(config) if isinstance(config, str) else config).validate()
        self.device = torch.device(device) if device is not None else default_device()
        self.net = SegDiffUNet(self.config.model, self.config.diffusion.steps).to(self.device)
        self.schedule = make_schedule(self.config.diffusion.steps, self.config.diffusion.schedule)

    # -- images ---------------------------------------------------------------------------------
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> per-channel normalised with the training set's statistics."""
        d = self.config.data
        if d.mean is None or d.std is None:
            return image * 2 - 1
        mean = torch.tensor(d.mean, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
        std = torch.tensor(d.std, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
        return (image - mean) / std

    def _as_batch(self, image) -> torch.Tensor:
        """[H, W, C] array, [C, H, W] or [B, C, H, W] -> float [B, C, H, W] in [0, 1] on the device, C the
        model's image_channels (a grey image is replicated for an RGB model; an [H, W] array is grey).

        Integer pixels (uint8, uint16) are scaled by their type's maximum, as when reading files.
        """
        c = self.config.model.image_channels
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(to_unit_float(np.ascontiguousarray(image)))
            if image.dim() == 2:
                image = image[None]
            elif image.dim() == 3 and image.shape[-1] in (1, c) and (c == 3 or image.shape[0] not in (1, c)):
                image = image.permute(2, 0, 1)  # [H, W, C]
        elif not torch.is_floating_point(image):
            image = torch.from_numpy(to_unit_float(image.cpu().numpy()))
        if image.dim() == 3:
            image = image[None]
        if image.dim() == 4 and image.shape[1] == 1 and c == 3:
            image = image.expand(-1, 3, -1, -1)
        if image.dim() != 4 or image.shape[1] != c:
            raise UserError(
                f"expected an image [H, W, {c}] or [B, {c}, H, W] (the model was trained on {c}-channel images), "
                f"got shape {tuple(image.shape)}"
            )
        if not torch.isfinite(image).all():
            raise UserError("the image has NaN or infinite values; replace them before predicting")
        return image.to(self.device, torch.float32)

    @property
    def classes(self):
        """The ClassSet of a multi-class model (names, values, colours, ignore label), None for binary."""
        from .data.classes import ClassSet

        return ClassSet.from_config(self.config.data)

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
        K-class model the mask holds class indices 0..K-1 (any other value, e.g. 255, is ignored)."""
        image = self._as_batch(image)
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
        if t is None:
            t = torch.randint(len(self.schedule), (n,), generator=generator).to(self.device)
        if eps is None:
            eps = torch.randn(x0.shape, generator=generator).to(self.device)
        cond = self.net.encode_image(self.normalize(image))
        return training_loss(
            self.net,
            x0,
            cond,
            t.to(self.device),
            eps.to(self.device),
            self.schedule,
            self.config.model.prediction,
            valid,
        )

    # -- prediction -----------------------------------------------------------------------------
    def sampling_options(self, base: PredictConfig | None = None, **overrides) -> PredictConfig:
        """The prediction protocol: `base` (default: the config's `predict` section) with `overrides`
        (PredictConfig fields; None = keep; `steps` = `sampling_steps`), validated for this model.
        A new object: the config is not changed."""
        base = self.config.predict if base is None else base
        return base.override(overrides, T=self.config.diffusion.steps, size=self.config.data.size)

    def network_calls(self, height: int, width: int, batch: int = 1, opts: PredictConfig | None = None) -> int:
        """How many network calls `predict` makes for `batch` images of height x width under `opts` (the
        total that an `on_step` progress callback counts up to)."""
        opts = opts or self.sampling_options()
        size, T = self.config.data.size, len(self.schedule)
        if opts.mode == "tile" and (height > size or width > size):
            if min(height, width) < size:
                height, width = height + (-height) % size, width + (-width) % size
            n = len(windows(height, width, size, opts.tile_stride or size))
            per_call = max(1, opts.batch_generations // max(1, opts.generations))
            return batch * sum(network_calls(min(per_call, n - i), opts, T) for i in range(0, n, per_call))
        return network_calls(batch, opts, T)

    def network_inputs(self, shape: tuple[int, int], opts: PredictConfig) -> tuple[tuple[int, int], int]:
        """The network input size and the number of inputs (1, or the windows) for an image of `shape` (H, W)."""
        size, stride = self.config.data.size, self.config.model.stride
        H, W = shape
        if opts.mode == "resize":
            return (size, size), 1
        if opts.mode == "tile" and (H > size or W > size):
            h, w = (-(-H // size) * size, -(-W // size) * size) if min(H, W) < size else (H, W)
            return (size, size), len(windows(h, w, size, opts.tile_stride or size))
        return (-(-H // stride) * stride, -(-W // stride) * stride), 1

    def resolve_compile(self, opts: PredictConfig, shapes: list[tuple[int, int]], repeats: int = 1) -> PredictConfig:
        """`opts` with compile="auto" resolved for the work ahead: images of `shapes` (H, W), each sampled
        `repeats` times (segdiff.predict.compiling.auto_compile). The decision is kept in `compile_decision`."""
        if opts.compile != "auto":
            self.compile_decision = compiling.CompileDecision(opts.compile, "set explicitly")
            return opts
        work: dict[tuple[int, int], int] = {}
        for shape in shapes:
            size, n = self.network_inputs(tuple(shape), opts)
            work[size] = work.get(size, 0) + n * repeats
        steps = opts.steps_for(self.config.diffusion.steps)
        self.compile_decision = compiling.decide(self.net, opts, self.device, list(work.items()), steps)
        return replace(opts, compile=self.compile_decision.mode)

    @torch.no_grad()
    def predict_x0(
        self,
        image,
        keys: list | None = None,
        opts: PredictConfig | None = None,
        on_step: Callable[[], None] | None = None,
        full_batch: int | None = None,
    ) -> torch.Tensor:
        """Every generation's x0 at the input's resolution: [B, G, H, W] ([B, G, K, H, W] for K classes), by
        opts.mode (resize, tile, pad).

        on_step, if given, is called after every network call (`network_calls` says how many there are).
        full_batch: the images per call of the run this call belongs to (predict_folder's batch): while
        compiling, a smaller last call is padded to the network batch shape of a full one.
        """
        opts = opts or self.sampling_options()
        self.net.eval()
        image = self._as_batch(image)
        B, _, H, W = image.shape
        opts = self.resolve_compile(opts, [(H, W)] * B)
        keys = list(range(B)) if keys is None else keys
        size, stride = self.config.data.size, self.config.model.stride
        # refuse what cannot fit before any work, or lower batch_generations (with a warning): segdiff/memory.py
        opts = check_prediction(self.config, opts.mode, max(B, full_batch or 0), H, W, opts, self.device)
        G, bg = opts.generations, opts.batch_generations
        rows = compiling.chunk_rows(max(B, full_batch or 0), G, bg)
        x = self.normalize(image)
        if opts.mode == "resize":
            small = resize_image(x, (size, size))
            x0 = sample_x0(self.net, self.schedule, small, keys, opts, on_step, pad_rows=rows)
            if x0.dim() == 5:  # [B, G, K, h, w]: resize the G x K maps as channels
                return resize_image(x0.flatten(1, 2), (H, W)).unflatten(1, x0.shape[1:3])
            return resize_image(x0, (H, W))
        if opts.mode == "tile" and (H > size or W > size):
            return torch.stack([self._tiled(x[b : b + 1], keys[b], opts, on_step) for b in range(B)])
        if opts.mode not in ("pad", "tile"):
            raise UserError(f"predict.mode {opts.mode!r}: use 'resize', 'tile' or 'pad'")
        padded, _ = pad_to_stride(x, stride)
        return sample_x0(self.net, self.schedule, padded, keys, opts, on_step, pad_rows=rows)[..., :H, :W]

    def _tiled(self, x: torch.Tensor, key, opts: PredictConfig, on_step=None) -> torch.Tensor:
        """[1, C, H, W] -> [G, H, W] ([G, K, H, W]): windows of the training size, G(I) per window, blended.

        Windows go through the network in groups of about batch_generations / G, and are stitched as
        they come, so memory does not grow with the image beyond the stitched [G, H, W] maps.
        """
        tile = self.config.data.size
        padded, (H, W) = pad_to_stride(x, tile) if min(x.shape[-2:]) < tile else (x, x.shape[-2:])
        h, w = padded.shape[-2:]
        starts = windows(h, w, tile, opts.tile_stride or tile)
        stitcher = Stitcher(h, w, blend_weight(tile, opts.blend))
        per_call = max(1, opts.batch_generations // max(1, opts.generations))
        base = key if isinstance(key, tuple) else (key,)
        for i0 in range(0, len(starts), per_call):
            group = starts[i0 : i0 + per_call]
            crops = torch.cat([padded[..., y : y + tile, xx : xx + tile] for y, xx in group])
            wkeys = [(*base, "window", i) for i in range(i0, i0 + len(group))]
            rows = compiling.chunk_rows(per_call, opts.generations, opts.batch_generations)  # the last group too
            x0 = sample_x0(self.net, self.schedule, crops, wkeys, opts, on_step, pad_rows=rows)
            stitcher.add(x0, group)  # [n, G, tile, tile]
        return stitcher.result()[..., :H, :W]

    def predict(
        self,
        image,
        generations: int | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        seed: int | None = None,
        keys: list | None = None,
        return_samples: bool = False,
        opts: PredictConfig | None = None,
        on_step: Callable[[], None] | None = None,
        full_batch: int | None = None,
        **options,
    ) -> Prediction:
        """Multiple generations (paper 4.1) -> Prediction with tensors on the CPU.

        image: [H, W, 3] array or [3, H, W] / [B, 3, H, W] tensor in [0, 1]. The protocol is `opts` (default:
        the config's `predict` section) with the given arguments and `options` (other PredictConfig fields,
        e.g. variance="small", eta=0.5, mode="tile") overriding it; values are checked first. on_step, if
        given, is called after every network call (progress; `network_calls` gives the total).
        compile="auto" (the default) is resolved for this call's images unless `opts` comes resolved
        (`resolve_compile`); full_batch: see `predict_x0`.
        """
        opts = self.sampling_options(opts, generations=generations, steps=steps, sampler=sampler, seed=seed, **options)
        if self.config.model.mask_channels > 1:
            s = summarise_classes(self.predict_x0(image, keys, opts, on_step, full_batch))
            return Prediction(
                s["label"].cpu(),
                s["prob"].cpu(),
                s["entropy"].cpu(),
                s["samples"].cpu() if return_samples else None,
                s["disagreement"].cpu(),
                tuple(self.classes.names),
            )
        s = summarise(self.predict_x0(image, keys, opts, on_step, full_batch))
        return Prediction(
            s["mask"].cpu(), s["prob"].cpu(), s["uncertainty"].cpu(), s["samples"].cpu() if return_samples else None
        )

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
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: run folder not found")
        if weights not in WEIGHT_FILES:
            raise UserError(f"weights={weights!r}: choose one of {', '.join(WEIGHT_FILES)}")
        config = RunConfig.load(directory / "config.json")
        try:
            model = cls(config, device)
        except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as exc:
            raise CheckpointError(
                f"{directory / 'config.json'}: cannot build the model from this configuration ({exc})"
            ) from None
        order = {"best": ["best", "ema", "raw"], "ema": ["ema"], "raw": ["raw"]}[weights]
        for name in order:
            path = directory / WEIGHT_FILES[name]
            if not path.is_file() and prev_path(path).is_file():  # a checkpoint save was interrupted
                path = prev_path(path)
            if path.is_file():  # a damaged file is an error naming it, not a silent fall-back
                state, _ = read_weights(path)
                load_into(model.net, state, path)
                model.weights_file = path
                return model
        raise CheckpointError(
            f"{directory}: no weights ({', '.join(WEIGHT_FILES[n] for n in order)}) in this run folder"
        )
