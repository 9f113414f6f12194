"""`segdiff predict`: a file or folder of images -> per-image mask, probability and uncertainty maps.

Images of the same size are batched; a folder can be split across processes or machines with
num_parts / part_id (or under torchrun, one part per rank), and images already written are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from .. import faults
from ..atomic import atomic_write_text
from ..config import PredictConfig
from ..data.folder import list_images
from ..data.io import match_channels, read_image_channels
from ..errors import UserError
from ..lock import FileLock
from ..memory import is_out_of_memory
from .export import (
    is_done,
    remove_partials,
    stems_with_partials,
    write_class_prediction,
    write_classes_json,
    write_prediction,
)
from .predictor import Predictor


def read_model_image(path: Path, channels: int):
    """An image file as float32 [H, W, channels] for a model trained on `channels`-channel images (grey is
    replicated for an RGB model; other mismatches are a DataError naming the file)."""
    return match_channels(read_image_channels(path), channels, path)


def part_of(paths: list[Path], num_parts: int, part_id: int) -> list[Path]:
    """Deterministic split of a sorted list: part i gets items i, i + P, i + 2P, ..."""
    return sorted(paths)[part_id::num_parts]


def my_part(paths: list[Path], num_parts: int | None, part_id: int | None) -> tuple[list[Path], int, int]:
    """This process's images of a folder split into num_parts (part_id's share; under torchrun, rank r
    takes its share of the part: items I + r*P, I + (r + W)*P, ...), and the effective (part, parts)."""
    num_parts, part_id = num_parts or 1, part_id or 0
    if not 0 <= part_id < num_parts:
        raise UserError(f"--part-id {part_id}: must be between 0 and --num-parts - 1 = {num_parts - 1}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        num_parts, part_id = num_parts * world, part_id + int(os.environ["RANK"]) * num_parts
    return part_of(paths, num_parts, part_id), part_id, num_parts


def write_output(out: Path, stem: str, pred, j: int, classes, save_generations: bool) -> None:
    """Write the maps of image j of a batch's Prediction as `stem` (segdiff.predict.export)."""
    samples = pred.samples[j].numpy() if save_generations else None
    if classes is not None:
        maps = (pred.mask[j], pred.prob[j], pred.uncertainty[j], pred.disagreement[j])
        write_class_prediction(out, stem, classes, *(m.numpy() for m in maps), samples)
    else:
        write_prediction(out, stem, pred.mask[j].numpy(), pred.prob[j].numpy(), pred.uncertainty[j].numpy(), samples)


def predict_batch(
    model: Predictor, items: list[tuple[Path, torch.Tensor]], opts: PredictConfig, samples: bool, full: int
):
    """One batch of same-size images -> Prediction. The noise of an image is keyed by its stem: the same
    image gets the same result in any batch or part. Out of memory is a UserError saying what to lower."""
    batch = torch.stack([im for _, im in items])
    try:
        return model.predict(batch, keys=[p.stem for p, _ in items], return_samples=samples, opts=opts, full_batch=full)
    except (RuntimeError, MemoryError) as exc:
        if not (isinstance(exc, MemoryError) or is_out_of_memory(exc)):
            raise
        raise UserError(
            f"{items[0][0]}: out of memory predicting {len(items)} image(s) of {batch.shape[-1]}x"
            f"{batch.shape[-2]} on {model.device}; use --mode tile, a smaller --batch-generations or "
            "--batch-images 1"
        ) from None


def clear_partials(out: Path, mine: list[Path], todo: list[Path]) -> None:
    """Finished images that still have a killed writer's temporary files (a killed --overwrite): tidy them."""
    partial = stems_with_partials(out)
    for p in mine:
        if p.stem in partial and p not in todo:
            lock = FileLock(out / ".locks" / f"{p.stem}.lock")
            if lock.acquire():
                remove_partials(out, p.stem)
                lock.release(unlink=True)


def predict_folder(
    model: Predictor,
    inputs: str | Path,
    out: str | Path,
    batch_images: int = 4,
    save_generations: bool = False,
    num_parts: int | None = None,
    part_id: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    opts: PredictConfig | None = None,
    **options,
) -> dict:
    """Predict every image of `inputs` into `out` with the protocol `opts` (default: the run's `predict`
    config) and `options` overriding it (PredictConfig fields, `steps` = `sampling_steps`), checked
    before any work. `model`: a Predictor, or a SegDiff (its predictor is used).

    Under torchrun each rank predicts its share; the model is expected on this rank's device (the CLI
    loads it there: segdiff.devices.default_device maps "cuda" to cuda:LOCAL_RANK)."""
    model = getattr(model, "predictor", model)
    out = Path(out)
    opts = model.sampling_options(opts, **options)
    if batch_images < 1:
        raise UserError(f"--batch-images {batch_images}: must be at least 1")
    mine, part_id, num_parts = my_part(list_images(Path(inputs)), num_parts, part_id)
    todo = [p for p in mine if overwrite or not is_done(out, p.stem)]
    out.mkdir(parents=True, exist_ok=True)
    # compile="auto": decided once for the whole folder (image sizes estimated from the first image)
    reason = "set explicitly"
    if todo and opts.compile == "auto":
        shape = tuple(read_image_channels(todo[0]).shape[:2]) if opts.mode != "resize" else (1, 1)
        opts = model.resolve_compile(opts, [shape] * len(todo))
        reason = model.compile_decision.reason
    t0 = time.time()
    bar = tqdm(total=len(todo), disable=not progress, desc="predict", unit="img")
    if progress and opts.compile != "off":
        bar.write(f"compiling the network ({opts.compile}) in the first batch: {reason}")
    classes = model.classes
    if classes is not None:
        write_classes_json(out, classes)
    # one writer per image: a lock per output stem (OUT/.locks/<stem>.lock, gone with its process), so
    # that parts, torchrun ranks and job arrays may share one folder; an image another process holds is left to it
    locks: dict[str, FileLock] = {}
    groups: dict[tuple[int, int], list[tuple[Path, torch.Tensor]]] = {}  # images of one size, batched
    predicted, busy, done_meanwhile = 0, 0, 0

    def flush(items) -> None:
        nonlocal predicted
        pred = predict_batch(model, items, opts, save_generations, batch_images)
        for j, (p, _) in enumerate(items):
            write_output(out, p.stem, pred, j, classes, save_generations)
            locks.pop(p.stem).release(unlink=True)
            predicted += 1
            faults.point("predict.image")
        bar.update(len(items))

    try:
        clear_partials(out, mine, todo)
        for p in todo:
            lock = FileLock(out / ".locks" / f"{p.stem}.lock")
            if not lock.acquire():
                busy += 1
                continue
            if not overwrite and is_done(out, p.stem):  # finished by another process since the listing
                lock.release(unlink=True)
                done_meanwhile += 1
                continue
            locks[p.stem] = lock
            remove_partials(out, p.stem)
            image = torch.from_numpy(read_model_image(p, model.config.model.image_channels)).permute(2, 0, 1)
            key = tuple(image.shape[1:])
            groups.setdefault(key, []).append((p, image))
            if len(groups[key]) >= batch_images:
                flush(groups.pop(key))
        for items in groups.values():
            flush(items)
    finally:
        for lock in locks.values():  # an error: the images not written are free for the next run
            lock.release(unlink=True)
        with contextlib.suppress(OSError):
            (out / ".locks").rmdir()  # when empty
    bar.close()
    seconds = time.time() - t0
    summary = {
        "images": len(mine),
        "predicted": predicted,
        "skipped": len(mine) - len(todo) + done_meanwhile,
        "busy": busy,
        "part": [part_id, num_parts],
        "seconds": seconds,
        "seconds_per_image": seconds / max(predicted, 1),
        "device": str(model.device),
        "weights": str(model.weights_file or ""),
        # the protocol as run, with the sampling steps resolved (None = T)
        "protocol": asdict(replace(opts, sampling_steps=opts.steps_for(model.config.diffusion.steps))),
        "compile_reason": reason,  # why protocol.compile is what it is ("auto" resolved once for the folder)
        "T": model.config.diffusion.steps,  # the diffusion's length (not the sampling chain's)
        "size": model.config.data.size,
    }
    name = "predict.json" if num_parts == 1 else f"predict.part{part_id}of{num_parts}.json"
    atomic_write_text(out / name, json.dumps(summary, indent=2) + "\n")
    return summary
