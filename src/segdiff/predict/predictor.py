"""`Predictor`: one network with one set of weights, on one device, and the prediction protocol around it
(multiple generations, paper 4.1; resize / tile / pad for any image size; compile="auto").

    predictor = Predictor.from_run("runs/my-run", weights="ema")
    pred = predictor.predict(image, generations=30)           # pred.mask, pred.prob, pred.uncertainty

It is built from a run folder and named weights (best, ema, raw), or from a network in memory: training's
validation builds one over the weights it scores, so nothing is patched on a shared object. `SegDiff`
(segdiff.api) is the friendly facade over a Predictor and training's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_into, read_weights, weights_path
from ..classset import ClassSet
from ..config import PredictConfig, RunConfig
from ..data.io import to_unit_float
from ..data.transforms import normalize, resize_image
from ..devices import default_device
from ..diffusion import Schedule, make_schedule
from ..errors import CheckpointError, UserError
from ..memory import check_prediction
from ..model import build_network
from . import compiling
from .ensemble import network_calls, output_kind, sample_x0, summarise, summarise_classes
from .tiling import Stitcher, blend_weight, pad_to_stride, padded, windows, windows_per_call


@dataclass
class Prediction:
    """One prediction; `kind` says which of two meanings its fields have.

    kind "binary": mask (bool), prob (mean foreground probability) and uncertainty [B, H, W]; uncertainty is
    the standard deviation over generations (in [0, 0.5]; also `std`); samples: [B, G, H, W] per-generation
    maps in [0, 1].

    kind "classes" (a multi-class model): mask = the label, class indices int64 [B, H, W]; prob [B, K, H, W];
    uncertainty = entropy of the mean class distribution [B, H, W] (nats, in [0, log K]; also `entropy`);
    disagreement [B, H, W] (fraction of generations whose argmax differs from the label); samples
    [B, G, K, H, W] (each generation's distribution). `classes` holds the class names in label order (None
    for binary).
    """

    mask: torch.Tensor
    prob: torch.Tensor
    uncertainty: torch.Tensor
    samples: torch.Tensor | None = None
    disagreement: torch.Tensor | None = None
    classes: tuple[str, ...] | None = None

    @property
    def kind(self) -> str:
        return "binary" if self.classes is None else "classes"

    @property
    def std(self) -> torch.Tensor | None:
        """The standard deviation over generations of a binary prediction (its `uncertainty`); None for K classes."""
        return self.uncertainty if self.kind == "binary" else None

    @property
    def entropy(self) -> torch.Tensor | None:
        """The entropy (nats) of a K-class prediction's mean distribution (its `uncertainty`); None for binary."""
        return self.uncertainty if self.kind == "classes" else None


def image_batch(image, channels: int, device: torch.device) -> torch.Tensor:
    """[H, W, C] array, [C, H, W] or [B, C, H, W] -> float [B, C, H, W] in [0, 1] on `device`, C = `channels`
    (a grey image is replicated for an RGB model; an [H, W] array is grey).

    Integer pixels (uint8, uint16) are scaled by their type's maximum, as when reading files.
    """
    c = channels
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
    return image.to(device, torch.float32)


class Predictor:
    """Predicts with `net` (its weights as they are) under the run's `config`, on `device`.

    config: the run's RunConfig; net: a SegDiffUNet of that architecture; device: where the network is
    (default: the network's own device); schedule: the run's diffusion schedule (default: made from the
    config); weights_file: where the weights came from (recorded in predict.json), None for weights in
    memory. `compile_decision` holds the last compile="auto" decision (`resolve_compile`).
    """

    def __init__(
        self,
        config: RunConfig,
        net: torch.nn.Module,
        device: torch.device | str | None = None,
        schedule: Schedule | None = None,
        weights_file: Path | None = None,
    ):
        self.config = config
        self.net = net
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.schedule = (
            schedule if schedule is not None else make_schedule(config.diffusion.steps, config.diffusion.schedule)
        )
        self.weights_file = weights_file
        self.compile_decision = compiling.CompileDecision(config.predict.compile, "not resolved yet")

    @classmethod
    def from_run(cls, run: str | Path, weights: str = "best", device: torch.device | str | None = None) -> Predictor:
        """The run folder's config.json and the named weights ("best": best on validation, falling back to
        ema, then raw, when the run has none yet; "ema"; "raw"). A damaged weights file is a CheckpointError
        naming it (no fall-back to other weights)."""
        run = Path(run)
        if not run.is_dir():
            raise CheckpointError(f"{run}: run folder not found")
        config = RunConfig.load(run / "config.json")
        path = weights_path(run, weights)
        device = default_device(device)
        try:
            net = build_network(config, device)
        except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as exc:
            raise CheckpointError(
                f"{run / 'config.json'}: cannot build the model from this configuration ({exc})"
            ) from None
        state, _ = read_weights(path)
        load_into(net, state, path)
        return cls(config, net, device, weights_file=path)

    # -- images ---------------------------------------------------------------------------------
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] in [0, 1] -> per-channel normalised with the training set's statistics."""
        return normalize(image, self.config.data.mean, self.config.data.std)

    def image_batch(self, image) -> torch.Tensor:
        """Any accepted image form (see `image_batch`) -> float [B, C, H, W] in [0, 1] on the device."""
        return image_batch(image, self.config.model.image_channels, self.device)

    @property
    def classes(self) -> ClassSet | None:
        """The ClassSet of a multi-class model (names, values, colours, ignore label), None for binary."""
        return ClassSet.from_config(self.config.data)

    # -- the protocol ---------------------------------------------------------------------------
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
        _, n = self.network_inputs((height, width), opts)
        T, kind = len(self.schedule), output_kind(self.net)
        if n > 1:  # windows, in groups of windows_per_call
            per_call = windows_per_call(opts.generations, opts.batch_generations)
            return batch * sum(network_calls(min(per_call, n - i), opts, T, kind) for i in range(0, n, per_call))
        return network_calls(batch, opts, T, kind)

    def network_inputs(self, shape: tuple[int, int], opts: PredictConfig) -> tuple[tuple[int, int], int]:
        """The network input size and the number of inputs (1, or the windows) for an image of `shape` (H, W)."""
        size, stride = self.config.data.size, self.config.model.stride
        H, W = shape
        if opts.mode == "resize":
            return (size, size), 1
        if opts.mode == "tile" and (H > size or W > size):
            h, w = (padded(H, size), padded(W, size)) if min(H, W) < size else (H, W)
            return (size, size), len(windows(h, w, size, opts.tile_stride or size))
        return (padded(H, stride), padded(W, stride)), 1

    def network_batch(
        self, shape: tuple[int, int], batch: int, opts: PredictConfig
    ) -> tuple[tuple[int, int], int, int]:
        """One network call for `batch` images of `shape` (H, W) under `opts`: its input size (h, w), the
        images or windows whose G(I) it holds, and its rows (images x generations; `compiling.chunk_rows`).
        What the memory check (segdiff.memory.check_prediction) estimates."""
        size, n = self.network_inputs(shape, opts)
        images = min(n, windows_per_call(opts.generations, opts.batch_generations)) if n > 1 else batch
        return size, images, compiling.chunk_rows(images, opts.generations, opts.batch_generations)

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
        sampling_steps = opts.steps_for(self.config.diffusion.steps)
        self.compile_decision = compiling.decide(self.net, opts, self.device, list(work.items()), sampling_steps)
        return replace(opts, compile=self.compile_decision.mode)

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_generations(
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
        image = self.image_batch(image)
        B, _, H, W = image.shape
        opts = self.resolve_compile(opts, [(H, W)] * B)
        keys = list(range(B)) if keys is None else keys
        size, stride = self.config.data.size, self.config.model.stride
        # refuse what cannot fit before any work, or lower batch_generations (with a warning): segdiff/memory.py
        batch = max(B, full_batch or 0)
        opts = check_prediction(self.config, opts, (H, W), self.device, lambda o: self.network_batch((H, W), batch, o))
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
            return torch.stack([self.sample_tiled(x[b : b + 1], keys[b], opts, on_step) for b in range(B)])
        if opts.mode not in ("pad", "tile"):
            raise UserError(f"predict.mode {opts.mode!r}: use 'resize', 'tile' or 'pad'")
        padded, _ = pad_to_stride(x, stride)
        return sample_x0(self.net, self.schedule, padded, keys, opts, on_step, pad_rows=rows)[..., :H, :W]

    def sample_tiled(self, x: torch.Tensor, key, opts: PredictConfig, on_step=None) -> torch.Tensor:
        """Normalised [1, C, H, W] -> [G, H, W] ([G, K, H, W]): windows of the training size, G(I) per window,
        blended.

        Windows go through the network in groups of about batch_generations / G, and are stitched as
        they come, so memory does not grow with the image beyond the stitched [G, H, W] maps.
        """
        tile = self.config.data.size
        padded, (H, W) = pad_to_stride(x, tile) if min(x.shape[-2:]) < tile else (x, x.shape[-2:])
        h, w = padded.shape[-2:]
        starts = windows(h, w, tile, opts.tile_stride or tile)
        stitcher = Stitcher(h, w, blend_weight(tile, opts.blend))
        per_call = windows_per_call(opts.generations, opts.batch_generations)
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
        e.g. variance="small", eta=0.5, mode="tile") overriding it; values are checked first. `steps` is the
        sampling chain's length (predict.sampling_steps). on_step, if given, is called after every network
        call (progress; `network_calls` gives the total). compile="auto" (the default) is resolved for this
        call's images unless `opts` comes resolved (`resolve_compile`); full_batch: see `sample_generations`.
        """
        opts = self.sampling_options(opts, generations=generations, steps=steps, sampler=sampler, seed=seed, **options)
        x0 = self.sample_generations(image, keys, opts, on_step, full_batch)
        if self.config.model.mask_channels > 1:
            s = summarise_classes(x0)
            return Prediction(
                s["label"].cpu(),
                s["prob"].cpu(),
                s["entropy"].cpu(),
                s["samples"].cpu() if return_samples else None,
                s["disagreement"].cpu(),
                tuple(self.classes.names),
            )
        s = summarise(x0)
        return Prediction(
            s["mask"].cpu(), s["prob"].cpu(), s["uncertainty"].cpu(), s["samples"].cpu() if return_samples else None
        )
