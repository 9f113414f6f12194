"""DDP with K = 3 classes (and the ignore label): 2 ranks x 2 samples give the weights of 1 rank x 4."""

import json
import time
from pathlib import Path

from conftest import make_classes_data
from test_distributed import STEPS, TOL, _rows, _run, _weights

LAUNCHER = str(Path(__file__).resolve().parent / "test_distributed.py")


def test_two_ranks_match_one_rank_with_three_classes(tmp_path):
    data = make_classes_data(tmp_path / "data", splits=(("train", 6), ("val", 3)))
    t0 = time.time()
    for name, nproc in (("one", None), ("two", 2)):
        _run([LAUNCHER, str(data), str(tmp_path / name)], nproc=nproc)
    print(f"\nK=3 launcher runs, 1 and 2 processes: {time.time() - t0:.1f} s")
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1["model.F.weight"].shape[1] == 4  # background + 3 classes
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert diff <= TOL, f"2-rank weights differ from 1-rank weights by {diff}"
    moved = max(float((w2[k] - w2["ema." + k[6:]]).abs().max()) for k in w2 if k.startswith("model."))
    assert moved > 10 * TOL
    r1, r2 = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len([r for r in r2 if r["kind"] == "train"]) == STEPS
    for a, b in zip(r1, r2):
        if a["kind"] == "train":
            assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]) + 1e-7
        else:
            assert abs(a["raw_iou"] - b["raw_iou"]) <= 1e-6
    v1 = json.loads(Path(f"{tmp_path / 'one'}.val.json").read_text())
    v2 = json.loads(Path(f"{tmp_path / 'two'}.val.json").read_text())
    assert v1["val"]["n"] == v2["val"]["n"] == 3 and abs(v1["val"]["iou"] - v2["val"]["iou"]) <= 1e-6
