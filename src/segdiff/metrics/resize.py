"""Resize predictions to the ground truth's size before scoring (the Cityscapes protocol).

The Cityscapes preparer writes test images resized to the model's input (128 x 128) but keeps test masks
at the NATIVE crop size; a model with predict.mode "resize" returns maps at the input image's size
(128 x 128). `evaluate` refuses pairs of different sizes, so the predictions are first brought to each
ground-truth mask's size:

    segdiff evaluate --pred PRED --gt ROOT/test --resize-to-gt [--keep-resized PRED_NATIVE]

How: the probability map (PRED/prob/<stem>.tif, the mean over generations) is resized bilinearly
(antialiased when shrinking) to the mask's height and width and thresholded at 0.5, as predict
thresholds it; the uncertainty map is resized the same way. Without a probability map the binary
mask is resized by area averaging and a 0.5 threshold. The output folder has the layout of `segdiff
predict` (masks/, prob/, uncertainty/, written by its writers) and a resize.json. Maps that already have
the mask's size are copied unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..data.folder import check_paired, list_files, list_prob_files
from ..data.io import MASK_EXTS, read_mask, read_prob
from ..data.transforms import resize_image, resize_mask
from ..errors import UserError
from ..predict.export import write_prediction
from .files import resolve_gt, resolve_pred


def resize_map(values: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """float [H, W] in [0, 1] -> float32 [h, w] in [0, 1]: bilinear, antialiased when shrinking."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    return resize_image(t, hw)[0, 0].clamp(0, 1).numpy()


def resize_binary(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """bool [H, W] -> bool [h, w]: area-weighted resampling and a 0.5 threshold."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return resize_mask(t, hw)[0, 0].numpy() > 0.5


def resize_to_gt(pred: Path, gt: Path, out: Path, prob: Path | None = None) -> dict:
    """Write every prediction of `pred` (a `segdiff predict` folder, or a mask folder) at the size of its
    ground-truth mask in `gt` (a mask folder or a split folder with masks/) into `out`; returns a summary,
    also written to OUT/resize.json. `segdiff evaluate --resize-to-gt` calls it.

    A ground-truth mask without a prediction is a DataError naming it; predictions without ground truth
    are ignored (evaluate would refuse them; here they are simply not written)."""
    mask_dir, prob_dir = resolve_pred(Path(pred), prob)
    out = Path(out)
    if out.resolve() in (Path(pred).resolve(), mask_dir.resolve()):
        raise UserError(f"{out}: the folder of resized predictions must differ from the prediction folder")
    gt_dir = resolve_gt(Path(gt))
    gt_files = list_files(gt_dir, MASK_EXTS, "ground-truth mask")
    pred_files = list_files(mask_dir, MASK_EXTS, "predicted mask")
    check_paired(gt_files, pred_files, "predicted mask", mask_dir)
    prob_files = list_prob_files(prob_dir) if prob_dir is not None else {}
    unc_dir = Path(pred) / "uncertainty"
    unc_files = list_prob_files(unc_dir) if unc_dir.is_dir() else {}
    resized, from_prob = 0, 0
    for stem, gt_path in sorted(gt_files.items()):
        hw = read_mask(gt_path).shape
        pred_mask = read_mask(pred_files[stem])
        p = u = None
        if stem in prob_files:
            p = resize_map(read_prob(prob_files[stem]), hw)
            mask = p >= 0.5
            from_prob += 1
        else:
            mask = resize_binary(pred_mask, hw)
        if stem in unc_files:
            u = read_prob(unc_files[stem])
            u = resize_map(u, hw) if u.shape != hw else u
        resized += pred_mask.shape != hw
        write_prediction(out, stem, mask, p, u)  # predict's layout; a map the prediction lacks is not written
    summary = {
        "images": len(gt_files),
        "resized": resized,
        "masks_from_probability": from_prob,
        "pred": str(mask_dir),
        "prob": None if prob_dir is None else str(prob_dir),
        "gt": str(gt_dir),
        "out": str(out),
        "method": "probability bilinear (antialiased when shrinking) to the ground truth's size, then >= 0.5; "
        "without probability: the mask by area averaging and >= 0.5",
    }
    atomic_write_text(out / "resize.json", json.dumps(summary, indent=2) + "\n")
    return summary
