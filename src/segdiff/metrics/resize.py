"""Resize predictions to the ground truth's size before scoring (the Cityscapes protocol).

The Cityscapes preparer writes test images resized to the model's input (128 x 128) but keeps test masks
at the NATIVE crop size; a model with predict.mode "resize" returns maps at the input image's size
(128 x 128). `evaluate` refuses pairs of different sizes, so the predictions are first brought to each
ground-truth mask's size:

    python -m segdiff.metrics.resize --pred PRED --gt ROOT/test --out PRED_NATIVE
    segdiff evaluate --pred PRED_NATIVE --gt ROOT/test

How: the probability map (PRED/prob/<stem>.tif, the mean over generations) is resized bilinearly
(antialiased when shrinking) to the mask's height and width and thresholded at 0.5, as predict
thresholds it; the uncertainty map is resized the same way. Without a probability map the binary
mask is resized by area averaging and a 0.5 threshold. OUT has the layout of `segdiff predict`
(masks/, prob/, uncertainty/). Maps that already have the mask's size are copied unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.folder import list_files
from ..data.io import MASK_EXTS, read_mask, to_u8, write_float_tiff, write_mask, write_png
from ..data.transforms import resize_image, resize_mask
from ..errors import DataError, UserError
from .evaluate import list_prob_files, read_prob, resolve_gt, resolve_pred


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
    ground-truth mask in `gt` (a mask folder or a split folder with masks/) into `out`; returns a summary.

    A ground-truth mask without a prediction is a DataError naming it; predictions without ground truth
    are ignored (evaluate would refuse them; here they are simply not written)."""
    mask_dir, prob_dir = resolve_pred(Path(pred), prob)
    out = Path(out)
    if out.resolve() in (Path(pred).resolve(), mask_dir.resolve()):
        raise UserError(f"{out}: --out must differ from the prediction folder")
    gt_files = list_files(resolve_gt(Path(gt)), MASK_EXTS, "ground-truth mask")
    pred_files = list_files(mask_dir, MASK_EXTS, "predicted mask")
    prob_files = list_prob_files(prob_dir) if prob_dir is not None else {}
    unc_dir = Path(pred) / "uncertainty"
    unc_files = list_prob_files(unc_dir) if unc_dir.is_dir() else {}
    missing = sorted(set(gt_files) - set(pred_files))
    if missing:
        raise DataError(
            f"{gt_files[missing[0]]}: no predicted mask with stem '{missing[0]}' in {mask_dir}"
            + (f" ({len(missing)} missing)" if len(missing) > 1 else "")
        )
    for sub in ("masks", "prob", "uncertainty"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    resized, from_prob = 0, 0
    for stem, gt_path in sorted(gt_files.items()):
        hw = read_mask(gt_path).shape
        if stem in prob_files:
            p = resize_map(read_prob(prob_files[stem]), hw)
            mask = p >= 0.5
            write_float_tiff(out / "prob" / f"{stem}.tif", p)
            write_png(out / "prob" / f"{stem}.png", to_u8(p))
            from_prob += 1
        else:
            mask = resize_binary(read_mask(pred_files[stem]), hw)
        if stem in unc_files:
            u = read_prob(unc_files[stem])
            write_float_tiff(out / "uncertainty" / f"{stem}.tif", resize_map(u, hw) if u.shape != hw else u)
        resized += read_mask(pred_files[stem]).shape != hw
        write_mask(out / "masks" / f"{stem}.png", mask)
    summary = {
        "images": len(gt_files),
        "resized": resized,
        "masks_from_probability": from_prob,
        "pred": str(mask_dir),
        "prob": None if prob_dir is None else str(prob_dir),
        "gt": str(resolve_gt(Path(gt))),
        "out": str(out),
        "method": "probability bilinear (antialiased when shrinking) to the ground truth's size, then >= 0.5; "
        "without probability: the mask by area averaging and >= 0.5",
    }
    (out / "resize.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m segdiff.metrics.resize", description=__doc__.split("\n\n")[0])
    p.add_argument("--pred", required=True, type=Path, help="a `segdiff predict` output folder or a mask folder")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth masks (or ROOT/test)")
    p.add_argument("--out", required=True, type=Path, help="output folder, laid out as `segdiff predict` writes")
    p.add_argument("--prob", type=Path, help="probability maps (default: PRED/prob when it exists)")
    args = p.parse_args(argv)
    try:
        s = resize_to_gt(args.pred, args.gt, args.out, args.prob)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{s['resized']} of {s['images']} prediction(s) resized to the ground truth's size -> {s['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
