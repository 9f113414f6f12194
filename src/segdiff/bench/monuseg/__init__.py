"""The MoNuSeg benchmark (issues 3, 9): one command that trains, chooses its sampling setting on the validation
images, predicts the 14 test images by the paper's quadrant protocol and evaluates, within a total time budget;
then a one-pass baseline at equal training minutes.

    PYTHONPATH=src python3 -m segdiff.bench.monuseg --data /path/to/monuseg --out OUT --budget-minutes 9
        [--preset monuseg-fast] [--train-fraction 0.65] [--generations G --steps K] [--no-baseline]
    PYTHONPATH=src python3 -m segdiff.bench.monuseg --data /path/to/monuseg --out OUT --tiny   # CPU pipeline check

The data folder is the layout of ../shared/data/monuseg (and of `segdiff prepare monuseg`):
DATA/{train,test}/{images,masks}/<stem>.<ext>, 30 train and 14 test images at 512 x 512.

What one run does, in order (results.json `phases_s` holds the wall seconds of each phase):
 1. data: OUT/data, a view of DATA made of symbolic links (nothing is copied): `val` holds --val-images of
    the 30 training images (a seeded draw), `train` the others, `test` the test split.
 2. train: the preset (default `monuseg-fast`: the paper's network with the short-budget recipe) for
    --train-fraction (0.65) of --budget-minutes (9): TrainConfig.budget_minutes, turned into a fixed
    number of steps after measuring the first steps (compile included), written to OUT/run/config.json.
    Validation at the end of training keeps the better of the raw and EMA weights.
 3. select: a grid of samplers (DDIM, DDPM) x sampling steps (1, 2, 5, 10, 25) x generations (1..16) on
    the validation images (full 512 x 512, the same quadrant protocol), cheapest first, within half of the
    time left; the choice (segdiff.bench.monuseg.selection.choose_setting): the cheapest setting within 0.5 IoU points
    of the grid's best whose estimated test time fits what is left. With --generations and --steps the
    grid is skipped.
 4. predict: the test split at 512 x 512 by four 256 x 256 windows (stride 256), G(I) and the generations
    per window, as the authors did (predict_mode "tile").
 5. evaluate, figures: segdiff.metrics.evaluate.evaluate_dirs (per-image Dice/F1 and IoU averaged over the
    images, as the paper's Table 3; pooled; BoundF; calibration), OUT/results.json (written atomically),
    curves.png, selection.png (validation IoU against estimated test time), figure.png, reliability.png.
 6. baseline_*: the same network trained as a one-pass segmenter (x_t = 0, t = 0, sigmoid, BCE + soft
    Dice) for the same training minutes, predicted and evaluated alike (OUT/baseline/), reported beside
    SegDiff in results.json (`one_pass_baseline`, `segdiff_minus_one_pass`). It runs after the SegDiff
    pipeline and is not part of its budget.

--tiny is a pipeline check that runs on a CPU in minutes, NOT a result to compare with the paper: the
`tiny-fast` preset (1.2 M parameters, 32 x 32 windows) trained on random 32 x 32 crops of the real training
images, validated and tested on the central --tiny-crop x --tiny-crop (64) pixels of each image by the same
quadrant protocol scaled down (four 32 x 32 windows), with a smaller grid.

The parts, one module each, in the order of a run: `args` (the command line), `run` (the run's folders, clock
and phases, and the train / predict phases), `view` (1, the data view), `run_config` (2, training),
`selection` (3, the sampling setting), `figures` (figure.png, reliability.png), `results` (results.json),
`baseline` (the grey-threshold floor and 6, the one-pass baseline). `main` runs them.
"""

from __future__ import annotations

import time

from .args import parse_args
from .baseline import add_baseline, baseline_phase, threshold_baseline
from .figures import figures_phase
from .results import segdiff_result
from .run import predict_phase, start, write_json
from .run_config import segdiff_train_phase
from .selection import sampling_of, select_phase
from .view import data_phase, val_split

__all__ = ["main", "parse_args", "val_split"]


def main(argv=None) -> dict:
    """The phases in order (module docstring); results.json is written after the SegDiff pipeline and again
    after the one-pass baseline."""
    bench = start(parse_args(argv))
    split = data_phase(bench)  # 1
    trained = segdiff_train_phase(bench)  # 2
    selection = select_phase(bench, trained.model, split)  # 3
    pred, scores = predict_phase(bench, "", trained.model, bench.out, **sampling_of(selection))  # 4, 5
    figures_phase(bench, split)
    reference = threshold_baseline(bench.view)
    result = segdiff_result(bench, split, trained, selection, pred, scores, reference)
    write_json(bench.out / "results.json", result)
    if not bench.args.no_baseline:  # 6: after the SegDiff pipeline, outside its budget
        add_baseline(result, baseline_phase(bench, trained.cfg, trained.summary["elapsed_s"] / 60))
    result["phases_s"] = bench.phases.seconds
    result["total_minutes"] = (time.time() - bench.t_start) / 60
    write_json(bench.out / "results.json", result)
    return result
