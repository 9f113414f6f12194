"""The benchmarks' entry points: `segdiff benchmark`'s flag checks, and the MoNuSeg benchmark
(`python -m segdiff.bench.monuseg`): its argument checks, and one --tiny pipeline run on synthetic 64 x 64
images through every phase (data view, training, fixed sampling setting, prediction, evaluation, figures,
the grey-threshold reference and the one-pass baseline)."""

import json

import pytest
import torch

from conftest import make_dataset
from segdiff.bench import monuseg
from segdiff.bench.machine import bench_device, environment
from segdiff.cli import main as segdiff_main
from segdiff.errors import UserError


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--measure-steps", "5", "--steps", "2"], "--measure-steps 5: must be between 1 and --steps 2"),
        (["--steps", "101"], "--steps 101: must be between 1 and T = 100"),
        (["--repeats", "0"], "--repeats 0: must be at least 1"),
        (["--train-steps", "0"], "--train-steps 0: must be at least 1"),
        (["--variants", "default,fast"], "unknown fast-path variant 'fast'"),
    ],
)
def test_benchmark_flags_are_checked_before_any_work(flags, message, capsys):
    assert segdiff_main(["benchmark", "--quick", "--device", "cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segdiff benchmark: error: ") and message in err and len(err.splitlines()) == 1


def test_arguments_are_checked_before_any_work(tmp_path):
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--tiny"]
    with pytest.raises(UserError, match="--generations and --steps go together"):
        monuseg.parse_args([*base, "--generations", "2"])
    with pytest.raises(UserError, match="--train-minutes 5: must be above 0 and below --budget-minutes"):
        monuseg.parse_args([*base, "--train-minutes", "5"])
    args = monuseg.parse_args(base)
    assert (args.budget_minutes, args.preset, args.train_minutes) == (4.0, "tiny-fast", 4.0 * 0.65)
    with pytest.raises(UserError, match="--val-images 3: must be between 1 and 2"):
        monuseg.val_split(["a", "b", "c"], 3, 0)
    assert monuseg.val_split(["c", "a", "b", "d"], 2, 0) == monuseg.val_split(["d", "b", "a", "c"], 2, 0)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: no CUDA device is available"):
            bench_device("cuda")
    assert bench_device(None, "cpu") == torch.device("cpu")
    env = environment(torch.device("cpu"))
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and "git_commit" in env


@pytest.mark.slow
def test_tiny_pipeline_runs_every_phase_and_writes_its_results(tmp_path):
    data = make_dataset(tmp_path / "monuseg", splits=(("train", 3), ("test", 2)), size=64)
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--tiny", "--max-steps", "1", "--val-images", "1"]
    argv += ["--generations", "1", "--steps", "1", "--quiet"]
    result = monuseg.main(argv)

    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["phases_s"] == result["phases_s"]
    assert list(result["phases_s"]) == [
        "data",
        "train",
        "predict",
        "evaluate",
        "figures",
        "baseline_train",
        "baseline_predict",
        "baseline_evaluate",
    ]
    split = json.loads((out / "data" / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 2 and split["test"] == ["img00", "img01"]
    assert all(p.is_symlink() for p in (out / "data" / "train" / "images").iterdir())
    assert result["selection"]["chosen"] == {"sampler": "ddim", "sampling_steps": 1, "generations": 1}
    assert result["protocol"]["sampling_steps"] == 1 and result["protocol"]["windows_per_image"] == 4
    assert result["training"]["optimizer_steps"] == 1
    assert result["one_pass_baseline"]["training"]["prediction"] == "onepass"
    test, base = result["test"], result["one_pass_baseline"]["test"]
    assert result["segdiff_minus_one_pass"]["iou"] == test["iou_percent"] - base["iou_percent"]
    assert test["n_images"] == 2 and 0 <= test["iou_percent"] <= 100
    ref = result["reference_global_threshold"]
    assert 0 <= ref["iou_percent"] <= 100 and ref["rule"].startswith("foreground where grey (mean of RGB, 0-255) is")
    for name in ("curves.png", "figure.png", "reliability.png", "baseline/metrics/summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.rglob(".*.partial-*"))  # status files are written atomically (no temporary left)

    with pytest.raises(UserError, match="holds a former run .* pass --overwrite"):
        monuseg.main(argv)
