"""The CLI end to end on a tiny data set, and bad input: one-line errors, exit code 2, nothing corrupted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, tiny_config
from segdiff.cli import main
from segdiff.data.io import read_mask

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "segdiff", *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained through the Python entry point with the test config (the CLI presets are larger)."""
    from segdiff.train.loop import train

    root = tmp_path_factory.mktemp("cli")
    data = make_dataset(root / "data", splits=(("train", 6), ("val", 2), ("test", 3)))
    train(data, root / "run", tiny_config(max_steps=4), device="cpu", progress=False)
    return root, data


def test_train_predict_evaluate_end_to_end(trained, tmp_path):
    root, data = trained
    r = _run(
        "predict",
        "--checkpoint",
        str(root / "run"),
        "--input",
        str(data / "test" / "images"),
        "--out",
        str(tmp_path / "pred"),
        "--generations",
        "3",
        "--steps",
        "2",
        "--save-generations",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    for stem in ("img00", "img01", "img02"):
        m = read_mask(tmp_path / "pred" / "masks" / f"{stem}.png")
        assert m.shape == (16, 16)
        for f in (f"prob/{stem}.png", f"prob/{stem}.tif", f"uncertainty/{stem}.png", f"uncertainty/{stem}.tif"):
            assert (tmp_path / "pred" / f).is_file(), f
        assert len(list((tmp_path / "pred" / "generations" / stem).glob("*.png"))) == 3
    proto = json.loads((tmp_path / "pred" / "predict.json").read_text())["protocol"]
    assert proto["generations"] == 3 and proto["sampling_steps"] == 2
    r = _run(
        "evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(data / "test"), "--out", str(tmp_path / "e.json")
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["n_images"] == 3 and 0 <= summary["iou"] <= 1
    # window options are passed through and recorded; a stride larger than the window is refused
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 24, 3), dtype=np.uint8)).save(big)
    r = _run(
        "predict",
        "--checkpoint",
        str(root / "run"),
        "--input",
        str(big),
        "--out",
        str(tmp_path / "tiled"),
        "--mode",
        "tile",
        "--tile-stride",
        "8",
        "--blend",
        "gaussian",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert read_mask(tmp_path / "tiled" / "masks" / "big.png").shape == (40, 24)
    rec = json.loads((tmp_path / "tiled" / "predict.json").read_text())
    assert (rec["protocol"]["mode"], rec["protocol"]["tile_stride"], rec["protocol"]["blend"]) == (
        "tile",
        8,
        "gaussian",
    )
    _assert_user_error(
        _run(
            "predict",
            "--checkpoint",
            str(root / "run"),
            "--input",
            str(big),
            "--out",
            str(tmp_path / "t2"),
            "--mode",
            "tile",
            "--tile-stride",
            "20",
        ),
        "--tile-stride 20",
    )
    # a restarted predict skips what is written
    r = _run(
        "predict",
        "--checkpoint",
        str(root / "run"),
        "--input",
        str(data / "test" / "images"),
        "--out",
        str(tmp_path / "pred"),
        "--quiet",
    )
    assert r.returncode == 0 and "skipped 3" in r.stdout


def test_train_cli_tiny_preset_runs_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "data", splits=(("train", 4),), size=32)
    r = _run(
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "tiny",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--val-every",
        "0",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["preset"] == "tiny"
    r = _run("train", "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "3", "--resume", "--quiet")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 3


def _assert_user_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


def test_bad_inputs_give_clear_errors(trained, tmp_path):
    root, data = trained
    # missing data folder
    _assert_user_error(
        _run("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r1"), "--preset", "tiny"),
        "nope",
        "not found",
    )
    # unpaired file
    bad = make_dataset(tmp_path / "bad", splits=(("train", 3),))
    (bad / "train" / "masks" / "img02.png").unlink()
    _assert_user_error(
        _run("train", "--data", str(bad), "--out", str(tmp_path / "r2"), "--preset", "tiny"), "img02.png", "no mask"
    )
    # non-binary mask
    bad2 = make_dataset(tmp_path / "bad2", splits=(("train", 3),))
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(bad2 / "train" / "masks" / "img01.png")
    _assert_user_error(
        _run("train", "--data", str(bad2), "--out", str(tmp_path / "r3"), "--preset", "tiny"), "img01.png", "not binary"
    )
    # unreadable image
    bad3 = make_dataset(tmp_path / "bad3", splits=(("train", 3),))
    (bad3 / "train" / "images" / "img00.png").write_bytes(b"garbage")
    _assert_user_error(
        _run("train", "--data", str(bad3), "--out", str(tmp_path / "r4"), "--preset", "tiny"),
        "img00.png",
        "cannot read",
    )
    # size mismatch
    bad4 = make_dataset(tmp_path / "bad4", splits=(("train", 3),))
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(bad4 / "train" / "masks" / "img01.png")
    _assert_user_error(
        _run("train", "--data", str(bad4), "--out", str(tmp_path / "r5"), "--preset", "tiny"), "img01.png", "same size"
    )
    # empty folder
    empty = tmp_path / "empty" / "train"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    _assert_user_error(
        _run("train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r6"), "--preset", "tiny"),
        "no image files",
    )
    # a checkpoint from another configuration; the run folder is left as it was
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in ("config.json", "model.safetensors"):
        (ckpt / f).write_bytes((root / "run" / f).read_bytes())
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["model_channels"] = 8
    (ckpt / "config.json").write_text(json.dumps(cfg))
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    _assert_user_error(
        _run(
            "predict",
            "--checkpoint",
            str(ckpt),
            "--input",
            str(data / "test" / "images"),
            "--out",
            str(tmp_path / "p"),
            "--weights",
            "raw",
        ),
        "another configuration",
    )
    assert before == {p.name: p.read_bytes() for p in ckpt.iterdir()}
    # not a run folder
    _assert_user_error(
        _run(
            "predict", "--checkpoint", str(data), "--input", str(data / "test" / "images"), "--out", str(tmp_path / "p")
        ),
        "config.json not found",
    )
    # an existing run is not overwritten
    stamp = (root / "run" / "model.safetensors").read_bytes()
    _assert_user_error(
        _run("train", "--data", str(data), "--out", str(root / "run"), "--preset", "tiny"), "already holds a run"
    )
    assert (root / "run" / "model.safetensors").read_bytes() == stamp


def test_main_returns_2_on_user_error(tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "x"), "--gt", str(tmp_path / "y")]) == 2
    assert "error" in capsys.readouterr().err
