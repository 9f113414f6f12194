"""Validation during training: the run's prediction protocol on the val images, scored with the paper's
per-image foreground IoU and F1 (the mean over foreground classes for a multi-class run)."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..metrics.overlap import confusion, f1_from_confusion, iou_from_confusion
from ..predict.predictor import Predictor
from .distributed import DistInfo, all_reduce_sum


def class_iou(pred: torch.Tensor, gt: torch.Tensor, K: int) -> tuple[float, float]:
    """Mean over foreground classes (1..K-1) present in prediction or truth of IoU and Dice; ignored
    pixels (gt >= K) left out; 1, 1 when no foreground class is present in either."""
    keep = gt < K
    p, g = pred[keep].long(), gt[keep].long()
    ious, dices = [], []
    for k in range(1, K):
        pk, gk = p == k, g == k
        tp, fp, fn = int((pk & gk).sum()), int((pk & ~gk).sum()), int((~pk & gk).sum())
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
            dices.append(2 * tp / (2 * tp + fp + fn))
    return (sum(ious) / len(ious), sum(dices) / len(dices)) if ious else (1.0, 1.0)


def validation_options(predictor: Predictor, cfg: RunConfig, shapes: list[tuple[int, int]], validations: int):
    """The prediction protocol of validation (the run's `predict` config with the val generations and
    sampling steps), with compile="auto" resolved once for `validations` runs over images of `shapes` (H, W)."""
    opts = predictor.sampling_options(
        generations=cfg.train.val_generations, sampling_steps=cfg.train.val_sampling_steps, seed=cfg.train.seed
    )
    return predictor.resolve_compile(opts, shapes, repeats=validations)


@torch.no_grad()
def validate(predictor: Predictor, val_pairs, info: DistInfo, opts=None) -> dict[str, float]:
    """Foreground IoU and F1 of `predictor` (the weights to score) on this rank's share of the val images,
    summed over ranks. opts: the protocol (default `validation_options` for one run)."""
    cfg = predictor.config
    opts = opts or validation_options(predictor, cfg, [tuple(im.shape[-2:]) for im, _ in val_pairs], 1)
    sums = [0.0, 0.0, 0.0]
    for i in range(info.rank, len(val_pairs), info.world):
        image, mask = val_pairs[i]
        pred = predictor.predict(image, keys=[("val", i)], opts=opts).mask[0]
        if cfg.model.mask_channels > 1:  # multi-class: mean over foreground classes
            iou, f1 = class_iou(pred, mask[0], cfg.model.mask_channels)
        else:
            c = confusion(pred.numpy(), mask[0].numpy() > 0.5)
            iou, f1 = iou_from_confusion(c), f1_from_confusion(c)
        sums = [sums[0] + iou, sums[1] + f1, sums[2] + 1]
    iou, f1, n = all_reduce_sum(sums, predictor.device, info)
    return {"iou": iou / max(n, 1), "f1": f1 / max(n, 1), "n": int(n)}
