"""`segdiff predict` for a run trained on an nnU-Net data set: whole volumes, slice by slice.

    segdiff predict --checkpoint RUN --input imagesTs/ (or one case's CASE_0000 file) --out OUT

Per case CASE (its channels CASE_0000, CASE_0001, ... grouped by suffix), in the input's own format and
with the input's geometry (affine, spacing, orientation: segdiff.data.volume_io.write_like):

    OUT/CASE<ending>              the label volume (dataset.json's label values), as nnU-Net writes it
    OUT/prob/CASE<ending>         float32 [i, j, k, K] class probabilities (4th axis in label order)
    OUT/uncertainty/CASE<ending>  float32 entropy of the mean class distribution (nats)
    OUT/montage/CASE.png          a few slices: image, label in colour, uncertainty
    OUT/dataset.json              the labels and channels (read by `segdiff evaluate`), OUT/predict.json

The label volume is written last: it marks a finished case, which a rerun skips (unless overwrite).
Everything about a case (its files, grids and intensities) is checked before any of its files is written.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..config import PredictConfig
from ..data.io import write_png
from ..data.nnunet import Case, group_cases
from ..data.volume import from_slices, load_case
from ..data.volume_io import FLAT_ENDINGS, ending_of, write_like
from ..errors import UserError
from .export import heatmap
from .predictor import Predictor

MONTAGE_SLICES = 4


def montage(image: np.ndarray, label: np.ndarray, entropy: np.ndarray, classes, K: int) -> np.ndarray:
    """RGB uint8: rows of (first channel in grey, label in colour, uncertainty heat map) for a few slices
    (those with the most foreground, in order). image [C, n, a, b], label / entropy [n, a, b]."""
    fg = (label > 0).reshape(len(label), -1).sum(1)
    zs = np.sort(np.argsort(-fg, kind="stable")[:MONTAGE_SLICES])
    rows = []
    for z in zs:
        im = image[0, z]
        lo, hi = np.percentile(im, (1, 99))
        grey = (np.clip((im - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)
        rows.append(
            np.concatenate(
                [np.repeat(grey[..., None], 3, -1), classes.color_image(label[z]), heatmap(entropy[z], np.log(K))], 1
            )
        )
    return np.concatenate(rows, 0)


def predict_case(model: Predictor, image: np.ndarray, case: str, opts: PredictConfig, batch: int):
    """Slices [C, n, a, b] -> label [n, a, b] int64, prob [K, n, a, b], entropy [n, a, b] (float32). The noise of a
    slice is keyed by (case, slice index): a case's result does not depend on the batch or the other cases."""
    labels, probs, ents = [], [], []
    for z0 in range(0, image.shape[1], batch):
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image[:, z0 : z0 + batch], 1, 0)))
        keys = [(case, z) for z in range(z0, z0 + x.shape[0])]
        pred = model.predict(x, keys=keys, opts=opts, full_batch=batch)
        labels.append(pred.mask.numpy())
        probs.append(pred.prob.numpy())
        ents.append(pred.uncertainty.numpy())
    return np.concatenate(labels), np.moveaxis(np.concatenate(probs), 1, 0).astype(np.float32), np.concatenate(ents)


def predict_volumes(
    model,
    inputs: str | Path,
    out: str | Path,
    batch_slices: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    opts: PredictConfig | None = None,
    **options,
) -> dict:
    """Predict every case of `inputs` (a folder such as imagesTs/, or one case's channel file) into `out`."""
    model = getattr(model, "predictor", model)
    cfg = model.config
    vc = cfg.data.volume
    if vc.intensity is None:
        raise UserError(f"{model.weights_file or 'this run'}: not trained on an nnU-Net data set of volumes")
    if batch_slices < 1:
        raise UserError(f"--batch-images {batch_slices}: must be at least 1")
    opts = model.sampling_options(opts, **options)
    if opts.compile == "auto":
        opts = replace(opts, compile="off")  # a volume's slices are few network calls; eager is the safe default
    classes = model.classes
    out = Path(out)
    cases = group_cases(Path(inputs), cfg.model.image_channels)
    endings = {ending_of(files[0]) for files in cases.values()}
    if len(endings) > 1:
        raise UserError(f"{inputs}: cases of several formats ({', '.join(sorted(endings))}); give one at a time")
    ending = endings.pop()
    map_ending = ".tif" if ending in FLAT_ENDINGS else ending  # float maps of 2D data sets: TIFF
    todo = {c: f for c, f in cases.items() if overwrite or not (out / f"{c}{ending}").is_file()}
    out.mkdir(parents=True, exist_ok=True)
    labels = {n: v for n, v in zip(classes.names, classes.values)}
    if classes.ignore_value is not None:
        labels["ignore"] = classes.ignore_value
    meta = {
        "channel_names": {str(i): s["channel"] for i, s in enumerate(vc.intensity)},
        "labels": labels,
        "file_ending": ending,
        "numTraining": 0,
    }
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=2) + "\n")

    t0, n_slices = time.time(), 0
    for case, files in tqdm(todo.items(), disable=not progress, desc="predict", unit="case"):
        image, _ = load_case(Case(case, files), vc.intensity, vc.slice_axis)  # every check before any write
        label, prob, ent = predict_case(model, image, case, opts, batch_slices)
        n_slices += image.shape[1]
        axis = vc.slice_axis
        target = out / f"{case}{ending}"
        target.unlink(missing_ok=True)  # an earlier result stops counting as done before its maps change
        write_like(out / "prob" / f"{case}{map_ending}", from_slices(np.moveaxis(prob, 0, -1), axis), files[0])
        write_like(out / "uncertainty" / f"{case}{map_ending}", from_slices(ent.astype(np.float32), axis), files[0])
        pic = montage(image, label, ent, classes, classes.K)
        atomic_write(out / "montage" / f"{case}.png", lambda p, pic=pic: write_png(p, pic))
        values = classes.value_image(label)  # class indices -> dataset.json's label values
        write_like(target, from_slices(values, axis), files[0])
    seconds = time.time() - t0
    summary = {
        "cases": len(cases),
        "predicted": len(todo),
        "skipped": len(cases) - len(todo),
        "slices": n_slices,
        "seconds": seconds,
        "seconds_per_case": seconds / max(len(todo), 1),
        "slice_axis": vc.slice_axis,
        "device": str(model.device),
        "weights": str(model.weights_file or ""),
        "protocol": asdict(replace(opts, sampling_steps=opts.steps_for(cfg.diffusion.steps))),
    }
    atomic_write_text(out / "predict.json", json.dumps(summary, indent=2) + "\n")
    return summary
