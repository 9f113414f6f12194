"""The global grey-level threshold baseline (segdiff.metrics.baseline): one function for the demo's report and
the MoNuSeg benchmark, giving bitwise the numbers of the two implementations it replaced (copied below as
they were, as the reference)."""

import numpy as np
import pytest

from segdiff import rng
from segdiff.demo import synthetic_pair
from segdiff.metrics.baseline import (
    DEMO_THRESHOLDS,
    MONUSEG_LEVELS,
    MONUSEG_THRESHOLDS,
    best_global_threshold,
    grey,
)


def demo_best_threshold_iou(images, masks):  # segdiff.demo.best_threshold_iou before issue 11
    grays = [im.mean(axis=-1) for im in images]
    best = (0.0, 0.0)
    for thr in np.linspace(0, 1, 101):
        for above in (True, False):
            ious = []
            for g, m in zip(grays, masks):
                p = g >= thr if above else g < thr
                union = (p | m).sum()
                ious.append((p & m).sum() / union if union else 1.0)
            if np.mean(ious) > best[0]:
                best = (float(np.mean(ious)), float(thr))
    return best


def monuseg_threshold_baseline(train, test):  # benchmarks/monuseg.py before issue 11 (images in memory)
    def grey_hists(pairs):
        fg, bg = [], []
        for image, mask in pairs:
            g = np.round(image.mean(axis=-1) * 255).astype(np.int64)
            fg.append(np.bincount(g[mask], minlength=256))
            bg.append(np.bincount(g[~mask], minlength=256))
        return np.stack(fg), np.stack(bg)

    def threshold_scores(fg, bg):
        out = {}
        fg_above = np.cumsum(fg[:, ::-1], axis=1)[:, ::-1]
        bg_above = np.cumsum(bg[:, ::-1], axis=1)[:, ::-1]
        n_fg = fg.sum(axis=1)
        for t in range(256):
            for polarity, tp, fp in (
                ("above", fg_above[:, t], bg_above[:, t]),
                ("below", n_fg - fg_above[:, t], bg.sum(axis=1) - bg_above[:, t]),
            ):
                fn = n_fg - tp
                union, total = tp + fp + fn, 2 * tp + fp + fn
                iou = np.where(union > 0, tp / np.maximum(union, 1), 1.0)
                dice = np.where(total > 0, 2 * tp / np.maximum(total, 1), 1.0)
                out[(polarity, t)] = (iou, dice)
        return out

    (polarity, t), _ = max(threshold_scores(*grey_hists(train)).items(), key=lambda kv: float(kv[1][0].mean()))
    iou, dice = threshold_scores(*grey_hists(test))[(polarity, t)]
    return 100 * float(dice.mean()), 100 * float(iou.mean()), polarity, t


def _as_read(image_u8):  # as segdiff.data.io.read_image returns it: float32 in [0, 1]
    return image_u8.astype(np.float32) / np.float32(255)


def _demo_pairs(n, seed, size=32):
    pairs = [synthetic_pair(rng.generator(seed, "baseline-test", i), size) for i in range(n)]
    return [_as_read(im) for im, _ in pairs], [m for _, m in pairs]


def _cases():
    """Synthetic (images, masks) sets: the demo's texture data, intensity-separable data (a threshold that
    wins), and corner cases (an empty mask and a full mask, a constant image: ties everywhere)."""
    g = np.random.default_rng(0)
    cases = [_demo_pairs(8, 0), _demo_pairs(5, 1, size=20)]
    ims, ms = [], []
    for _ in range(6):
        m = g.random((24, 24)) < 0.3
        ims.append(np.clip(np.where(m, 0.7, 0.3)[..., None] + 0.1 * g.standard_normal((24, 24, 3)), 0, 1))
        ms.append(m)
    cases.append(([im.astype(np.float32) for im in ims], ms))
    flat = np.full((16, 16, 3), 0.5, np.float32)
    cases.append(
        (
            [flat, flat, _as_read(g.integers(0, 256, (16, 16, 3)))],
            [np.zeros((16, 16), bool)] * 2 + [g.random((16, 16)) < 0.5],
        )
    )
    cases.append(
        ([flat, _as_read(g.integers(0, 256, (16, 16, 3)))], [np.ones((16, 16), bool), np.zeros((16, 16), bool)])
    )
    return cases


@pytest.mark.parametrize("case", range(5))
def test_demo_protocol_is_bitwise_the_former_demo_baseline(case):
    images, masks = _cases()[case]
    best = best_global_threshold(zip(images, masks), DEMO_THRESHOLDS)
    old_iou, old_thr = demo_best_threshold_iou(images, masks)
    # the demo's report.json: best_global_threshold {iou, threshold} and margin_over_threshold (test IoU - iou)
    assert (best.fit_iou, best.threshold) == (old_iou, old_thr)
    assert type(best.threshold) is float and type(best.fit_iou) is float
    assert float(np.mean(best.iou)) == old_iou  # scored on the images it was chosen on


@pytest.mark.parametrize("fit_case,test_case", [(0, 1), (2, 2), (2, 0), (3, 4), (1, 2)])
def test_monuseg_protocol_is_bitwise_the_former_benchmark_baseline(fit_case, test_case):
    train, test = _cases()[fit_case], _cases()[test_case]
    best = best_global_threshold(zip(*train), MONUSEG_THRESHOLDS, MONUSEG_LEVELS, apply_to=zip(*test))
    dice, iou, polarity, t = monuseg_threshold_baseline(list(zip(*train)), list(zip(*test)))
    assert (100 * float(best.dice.mean()), 100 * float(best.iou.mean())) == (dice, iou)
    assert (best.polarity, best.threshold) == (polarity, t) and type(best.threshold) is int


def test_an_intensity_separable_set_is_solved_and_the_rule_reads_right():
    g = np.random.default_rng(1)
    masks = [g.random((12, 12)) < 0.4 for _ in range(3)]
    images = [np.where(m, 0.2, 0.8)[..., None].repeat(3, -1).astype(np.float32) for m in masks]  # dark foreground
    best = best_global_threshold(zip(images, masks), DEMO_THRESHOLDS)
    assert best.polarity == "below" and 0.2 < best.threshold <= 0.8 and best.fit_iou == 1.0
    assert best.rule == f"foreground where grey is < {best.threshold}"
    assert grey(images[0], 256).dtype == np.int64 and grey(images[0], 256).max() == round(0.8 * 255)
    with pytest.raises(ValueError, match="no images"):
        best_global_threshold([], DEMO_THRESHOLDS)
