"""The figures of the test prediction: figure.png (input, probability, uncertainty, mask, errors and truth per
test image) and reliability.png."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from ...data.io import read_image, read_mask, read_prob
from ...predict.figure import result_figure
from .run import Bench


def prediction_figure(path: Path, view: Path, pred: Path, stems: list[str], per_image: dict[str, dict]) -> None:
    """figure.png: per test image, the input, probability, uncertainty, mask, errors and truth
    (segdiff.predict.figure.result_figure), each row labelled with the image's Dice and IoU."""
    images, probs, uncs, masks, truths, labels = [], [], [], [], [], []
    for stem in stems:
        images.append(read_image(next((view / "test" / "images").glob(f"{stem}.*"))))
        truths.append(read_mask(next((view / "test" / "masks").glob(f"{stem}.*"))))
        probs.append(read_prob(pred / "prob" / f"{stem}.tif"))
        uncs.append(read_prob(pred / "uncertainty" / f"{stem}.tif"))
        masks.append(read_mask(pred / "masks" / f"{stem}.png"))
        s = per_image.get(stem, {})
        labels.append(f"{stem}\nDice {100 * s.get('f1', float('nan')):.1f} IoU {100 * s.get('iou', float('nan')):.1f}")
    result_figure(
        path, images, probs, uncs, truths, mask=masks, row_labels=labels, panel_size=(2.4, 2.5), fontsize=9, dpi=90
    )


def figures_phase(bench: Bench, split: dict) -> None:
    """figure.png (the first --figure-images test images) and reliability.png."""
    out, metrics_dir = bench.out, bench.out / "metrics"

    def figures():
        with open(metrics_dir / "summary_per_image.csv") as fh:
            per_image = {r["stem"]: {k: float(r[k]) for k in ("f1", "iou")} for r in csv.DictReader(fh)}
        show = sorted(split["test"])[: bench.args.figure_images]
        prediction_figure(out / "figure.png", bench.view, out / "pred", show, per_image)
        shutil.copy(metrics_dir / "summary_reliability.png", out / "reliability.png")

    bench.phases.run("figures", figures)
