"""Faults (docs/reliability.md): kills at any moment, two writers, damaged files, a full disk, NaN/Inf.

Kills are injected with SEGDIFF_FAULT (segdiff/faults.py), which ends the process with os._exit at a
named point: no exception handler, `finally` or atexit hook runs, as with `kill -9`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_classes_data, make_dataset, tiny_config
from segdiff.api import SegDiff
from segdiff.errors import CheckpointError, UserError
from segdiff.faults import FAULT_EXIT

SRC = str(Path(__file__).resolve().parents[1] / "src")
WEIGHTS = ("model.safetensors", "ema.safetensors", "best.safetensors")


def _segdiff(*args, fault: str | None = None, background: bool = False):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SEGDIFF_FAULT")}
    env |= {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if fault:
        env["SEGDIFF_FAULT"] = fault
    cmd = [sys.executable, "-m", "segdiff", *map(str, args)]
    if background:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _train_args(data: Path, run: Path, steps: int = 4) -> list:
    # 4 images of 32 px, batch 2, a checkpoint every 2 steps, validation (best.safetensors) every 3
    return ["train", "--data", data, "--out", run, "--preset", "tiny", "--max-steps", steps, "--batch-size", 2]


COMMON = ["--save-every", 2, "--val-every", 3, "--device", "cpu", "--quiet"]


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in WEIGHTS:
        out |= {f"{name}:{k}": v for k, v in load_file(str(run / name)).items()}
    state = torch.load(run / "train_state.pt", weights_only=True)
    for i, s in state["optimizer"]["state"].items():
        out |= {f"adam:{i}:{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)}
    return out


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 4-step CLI run of the tiny preset."""
    base = tmp_path_factory.mktemp("faults")
    data = make_dataset(base / "data", splits=(("train", 4), ("test", 3)), size=32)
    r = _segdiff(*_train_args(data, base / "full"), *COMMON)
    assert r.returncode == 0, r.stderr
    return data, base / "full"


# The chain of kills: each run is killed at a point, the next resumes what it left (and is killed
# itself), the last finishes. Every kill leaves the run folder loadable and resumable.
CHAIN = [
    # the first save: model and EMA renamed into place, not yet the training state -> resume restarts at 0
    ("checkpoint.between:2", False),
    ("train.step:3", True),  # after the 3rd optimizer step (checkpoint at 2 written)
    ("checkpoint.between:3", True),  # save at step 4: model new, EMA moved to ema.prev, new EMA not yet in place
    ("atomic.written:2", True),  # best.json of the step-3 validation written to its temporary name, not renamed
    ("checkpoint.staged:1", True),  # save at step 4: all three new files at temporary names
    ("checkpoint.between:6", True),  # save at step 4: all in place, the .prev files not yet removed
]


@pytest.mark.slow
def test_kill_at_any_point_then_resume_is_bitwise_equal(reference, tmp_path):
    data, full = reference
    run = tmp_path / "run"
    for i, (fault, resume) in enumerate(CHAIN):
        r = _segdiff(*_train_args(data, run), *COMMON, *(["--resume"] if resume else []), fault=fault)
        assert r.returncode == FAULT_EXIT, (fault, r.returncode, r.stderr[-2000:])
        if i >= 2:  # a checkpoint is complete: the run folder loads while it is being resumed
            for weights in ("raw", "ema"):
                SegDiff.load(run, weights=weights, device="cpu")
    r = _segdiff(*_train_args(data, run), *COMMON, "--resume")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 4
    a, b = _tensors(full), _tensors(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(full) == _losses(run)
    assert json.loads((full / "best.json").read_text()) == json.loads((run / "best.json").read_text())
    left = sorted(p.name for p in run.iterdir() if ".prev." in p.name or ".partial-" in p.name)
    assert left == [], left  # no .prev or temporary file left behind


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    """A K-class run (the 4-class texture data) trained for one step."""
    from segdiff.train.loop import train

    base = tmp_path_factory.mktemp("class_faults")
    data = make_classes_data(base / "data", splits=(("train", 2), ("test", 3)), ignore=False)
    train(data, base / "run", tiny_config(max_steps=1, val_every=0), device="cpu", progress=False)
    return data, base / "run"


# (run, first kill, kill on the --overwrite rerun, where that one leaves its temporary file). Binary: 4
# `predict.between` points per image, atomic writes 1-4 the maps of image 1, 5 its mask. K classes: 6 points
# per image; atomic write 1 is classes.json, 2-7 image 1's maps, the last of them color/<stem>.png.
KILLED_PREDICTIONS = [
    ("reference", "predict.between:7", "atomic.written:5", "masks"),
    ("class_run", "predict.between:9", "atomic.written:7", "color"),
]


@pytest.mark.slow
@pytest.mark.parametrize("run_fixture, kill, kill_overwrite, partial_in", KILLED_PREDICTIONS)
def test_killed_prediction_reruns_to_complete_identical_output(
    request, tmp_path, run_fixture, kill, kill_overwrite, partial_in
):
    data, full = request.getfixturevalue(run_fixture)
    images = data / "test" / "images"
    args = ["predict", "--checkpoint", full, "--input", images, "--generations", 2, "--steps", 2, "--quiet"]
    args += ["--batch-images", 1]  # the same batches in every run: bitwise the same maps
    r = _segdiff(*args, "--out", tmp_path / "clean")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "pred"
    # image 2 of 3 killed between its third and fourth file (image 1 complete); then inside the atomic
    # write of image 1's last file on a rerun with --overwrite
    r = _segdiff(*args, "--out", out, fault=kill)
    assert r.returncode == FAULT_EXIT, r.stderr
    masks = sorted(p.name for p in (out / "masks").iterdir() if not p.name.startswith("."))
    assert masks == ["img00.png"]  # the interrupted image has no mask: it is not taken as done
    r = _segdiff(*args, "--out", out, "--overwrite", fault=kill_overwrite)
    assert r.returncode == FAULT_EXIT, r.stderr
    assert any(".partial-" in p.name for p in (out / partial_in).iterdir())
    # the overwrite removed img00's mask before replacing its maps: img00 no longer counts as done
    assert not (out / "masks" / "img00.png").exists()
    r = _segdiff(*args, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "predicted 3 image(s), skipped 0" in r.stdout
    clean = {str(p.relative_to(tmp_path / "clean")): p.read_bytes() for p in (tmp_path / "clean").rglob("*.*")}
    got = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*.*")}
    clean.pop("predict.json"), got.pop("predict.json")
    assert got.keys() == clean.keys()  # no partial, lock or extra file
    for k in clean:
        assert got[k] == clean[k], k


@pytest.mark.slow
def test_second_train_on_a_live_run_is_refused_and_a_killed_run_leaves_no_lock(tmp_path):
    data = make_dataset(tmp_path / "data", splits=(("train", 4),), size=32)
    run = tmp_path / "run"
    live = _segdiff(*_train_args(data, run, steps=100000), "--val-every", 0, "--save-every", 0, background=True)
    try:
        deadline = time.time() + 120
        while not (run / "config.json").is_file() and live.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert live.poll() is None, live.stderr.read()
        r = _segdiff(*_train_args(data, run, steps=4), "--device", "cpu", "--resume")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"pid {live.pid} on host" in r.stderr and "is training this run folder" in r.stderr
        with pytest.raises(UserError, match=f"pid {live.pid}"):  # the Python entry point too
            from segdiff.train.loop import train

            train(data, run, tiny_config(), resume=True, device="cpu", progress=False)
    finally:
        live.kill()  # SIGKILL: the lock goes with the process
        live.wait()
    r = _segdiff(*_train_args(data, run, steps=2), "--device", "cpu", "--resume", "--quiet")
    assert r.returncode == 0, r.stderr


def test_prediction_leaves_an_image_another_process_holds(tmp_path):
    from segdiff.lock import FileLock
    from segdiff.predict.run import predict_folder

    data = make_dataset(tmp_path / "data", splits=(("test", 3),))
    out = tmp_path / "pred"
    other = FileLock(out / ".locks" / "img01.lock")
    assert other.acquire()
    try:
        s = predict_folder(SegDiff(tiny_config(), "cpu"), data / "test" / "images", out, progress=False)
    finally:
        other.release()
    assert (s["predicted"], s["busy"]) == (2, 1)
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == ["img00", "img02"]


# -- damaged files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A 2-step run of the test config (model, ema, best, train_state, config), trained in-process."""
    from segdiff.train.loop import train

    base = tmp_path_factory.mktemp("small")
    data = make_dataset(base / "data", splits=(("train", 6), ("val", 2)))
    train(data, base / "run", tiny_config(max_steps=2), device="cpu", progress=False)
    return data, base / "run"


def _copy(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    return dest


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[-3] ^= 0x40  # inside the last tensor's data: the header still parses
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", [_truncate, _flip_last_byte])
def test_damaged_weights_are_named_and_the_others_still_load(small_run, tmp_path, damage):
    _, run = small_run
    names = {"best": "best.safetensors", "ema": "ema.safetensors", "raw": "model.safetensors"}
    for weights, name in names.items():
        r = _copy(run, tmp_path / f"{weights}-{damage.__name__}")
        damage(r / name)
        with pytest.raises(CheckpointError, match=rf"{name}: .*(damaged|truncated)"):
            SegDiff.load(r, weights=weights, device="cpu")  # no silent fall-back to other weights
        for other in names.keys() - {weights}:
            SegDiff.load(r, weights=other, device="cpu")  # each kind of weights is its own file


def test_damaged_weights_or_state_stop_resume_naming_the_file(small_run, tmp_path):
    from segdiff.train.loop import train

    data, run = small_run
    for name, damage in [("model.safetensors", _flip_last_byte), ("train_state.pt", _truncate)]:
        r = _copy(run, tmp_path / name)
        damage(r / name)
        before = {p.name: p.read_bytes() for p in r.iterdir() if p.is_file()}
        with pytest.raises(CheckpointError, match=rf"{name}: .*(damaged|truncated)"):
            train(data, r, tiny_config(max_steps=4), resume=True, device="cpu", progress=False)
        after = {p.name: p.read_bytes() for p in r.iterdir() if p.is_file() and p.name != ".lock"}
        assert after == {k: v for k, v in before.items() if k != ".lock"}  # nothing changed


def test_train_state_values_are_checked_and_code_never_runs_on_load(small_run, tmp_path):
    from segdiff.checkpoint import read_train_state

    _, run = small_run
    r = _copy(run, tmp_path / "r")
    state = torch.load(r / "train_state.pt", weights_only=True)
    state["optimizer"]["state"][0]["exp_avg"].view(-1)[0] += 1.0  # silent corruption of a value
    torch.save(state, r / "train_state.pt")  # with the old digest
    with pytest.raises(CheckpointError, match=r"train_state\.pt: .*SHA-256"):
        read_train_state(r / "train_state.pt")
    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 2, "x": Evil()}, r / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"train_state\.pt: cannot read"):
        read_train_state(r / "train_state.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [b'{"preset": "tiny", "model": {', b"\xff\xfe\x00garbage", b'{"model": {"channel_mult": [1, "x"]}}', b"[]"],
)
def test_damaged_config_is_named(small_run, tmp_path, content):
    _, run = small_run
    r = _copy(run, tmp_path / "r")
    (r / "config.json").write_bytes(content)
    with pytest.raises(UserError, match=r"config\.json"):
        SegDiff.load(r, device="cpu")


def test_config_with_impossible_values_is_named(small_run, tmp_path):
    _, run = small_run
    r = _copy(run, tmp_path / "r")
    cfg = json.loads((r / "config.json").read_text())
    cfg["model"]["num_heads"] = 3  # 16 channels do not split into 3 heads
    (r / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"config\.json: .*num_heads"):
        SegDiff.load(r, device="cpu")


# -- a full disk ----------------------------------------------------------------------------------


def test_full_disk_keeps_the_last_checkpoint_and_stops_clearly(tiny_data, tmp_path, monkeypatch):
    from segdiff import faults
    from segdiff.checkpoint import find_checkpoint
    from segdiff.train.loop import train

    cfg = tiny_config(max_steps=4, val_every=0)
    ref = train(tiny_data, tmp_path / "ref", cfg, device="cpu", progress=False)
    # atomic writes: config.json 1, split.json 2, the step-2 checkpoint 3-5, the step-4 model file 6
    monkeypatch.setenv("SEGDIFF_FAULT", "atomic.written:6:enospc")
    faults.reset()
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"model\.safetensors: cannot write .*disk is full.*step 4.*\(step 2\) is kept"):
        train(tiny_data, run, tiny_config(max_steps=4, val_every=0), device="cpu", progress=False)
    monkeypatch.delenv("SEGDIFF_FAULT")
    assert [p.name for p in run.iterdir() if ".partial-" in p.name or ".prev." in p.name] == []
    assert find_checkpoint(run)[0] == 2
    resumed = train(tiny_data, run, tiny_config(max_steps=4), resume=True, device="cpu", progress=False)
    assert resumed["step"] == ref["step"] == 4
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(str(tmp_path / "ref" / name)), load_file(str(run / name))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_full_disk_while_predicting_names_the_file(small_run, tmp_path, monkeypatch):
    from segdiff import faults
    from segdiff.predict.run import predict_folder

    data, run = small_run
    monkeypatch.setenv("SEGDIFF_FAULT", "atomic.written:2:enospc")
    faults.reset()
    with pytest.raises(UserError, match=r"prob/img00\.png: cannot write .*disk is full"):
        predict_folder(SegDiff.load(run, device="cpu"), data / "val" / "images", tmp_path / "p", progress=False)
    assert not (tmp_path / "p" / "masks" / "img00.png").exists()
    assert [p for p in (tmp_path / "p").rglob("*") if ".partial-" in p.name or p.suffix == ".lock"] == []


# -- NaN and Inf ----------------------------------------------------------------------------------


def _poison(monkeypatch, at_call: int, where: str) -> None:
    """Make the training loss (`where`="loss") or the gradients ("grad") non-finite at one call."""
    import segdiff.train.step as step

    real, calls = step.training_loss, [0]

    def poisoned(net, *args):
        loss = real(net, *args)
        calls[0] += 1
        if calls[0] == at_call:
            if where == "loss":
                return loss * float("nan")
            return loss + torch.sqrt(next(net.parameters()) * 0).sum()  # finite value, NaN gradient
        return loss

    monkeypatch.setattr(step, "training_loss", poisoned)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_step_stops_the_run_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch, where):
    from segdiff.checkpoint import find_checkpoint
    from segdiff.train.loop import NonFiniteError, train

    _poison(monkeypatch, at_call=4, where=where)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"step 4: the loss or a gradient is not finite.*step 2\) is kept"):
        train(tiny_data, run, tiny_config(max_steps=6, val_every=0), device="cpu", progress=False)
    step, _, _ = find_checkpoint(run)
    assert step == 2
    assert all(torch.isfinite(v).all() for v in load_file(str(run / "model.safetensors")).values())
    assert "step 4: the loss or a gradient is not finite" in (run / "log.txt").read_text()


def test_nonfinite_steps_can_be_skipped_and_are_counted(tiny_data, tmp_path, monkeypatch):
    from segdiff.train.loop import train

    _poison(monkeypatch, at_call=2, where="grad")
    summary = train(
        tiny_data, tmp_path / "run", tiny_config(max_steps=4, skip_nonfinite=True), device="cpu", progress=False
    )
    assert summary["step"] == 4 and summary["skipped_nonfinite"] == 1
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "run" / "model.safetensors")).values())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows if r["kind"] == "train"] == [0, 1, 1, 1]
    assert "1 non-finite step(s) skipped" in (tmp_path / "run" / "log.txt").read_text()


# -- memory ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pad_prediction_that_cannot_fit_is_refused_before_work(reference, tmp_path):
    """`--mode pad` on a 600 x 600 image with the tiny preset (attention at 1/4: 22500 positions) needs about
    1 GB even one generation at a time (~180 GB before attention ran on the fused kernel, issue 19); with
    512 MB available it is refused at once with the estimate and the way out, no traceback."""
    import numpy as np
    from PIL import Image

    _, full = reference
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(big)
    cheap = ["--generations", 1, "--steps", 1, "--quiet"]
    env_cap = {"SEGDIFF_MAX_MEMORY": "512M"}  # whatever this machine has: the test does not depend on it
    t0 = time.time()
    r = _segdiff_env(env_cap, "predict", "--checkpoint", full, "--input", big, "--out", tmp_path / "p", "--mode", "pad")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "needs about" in r.stderr and "22500 positions" in r.stderr and "--mode tile" in r.stderr, r.stderr
    assert time.time() - t0 < 60  # refused before sampling
    assert not (tmp_path / "p" / "masks" / "big.png").exists()
    r = _segdiff_env(
        env_cap, "predict", "--checkpoint", full, "--input", big, "--out", tmp_path / "t", "--mode", "tile", *cheap
    )
    assert r.returncode == 0, r.stderr  # the way out works
    assert (tmp_path / "t" / "masks" / "big.png").is_file()


def _segdiff_env(extra: dict, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SEGDIFF_FAULT")}
    env |= {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
    return subprocess.run(
        [sys.executable, "-m", "segdiff", *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


def test_prediction_falls_back_to_smaller_network_batches_and_says_so(monkeypatch):
    from segdiff.memory import predict_bytes

    model = SegDiff(tiny_config(), "cpu")
    image = torch.rand(3, 64, 64)
    opts = {"generations": 8, "steps": 2, "batch_generations": 8}
    expected = model.predict(image, **opts)
    full = predict_bytes(model.config, 1, 8, 64, 64, model.device)["total"]
    monkeypatch.setenv("SEGDIFF_MAX_MEMORY", str(int(full * 0.6)))
    with pytest.warns(UserWarning, match=r"more than the .* available on cpu; using --batch-generations 4"):
        got = model.predict(image, **opts)
    torch.testing.assert_close(got.prob, expected.prob, atol=1e-5, rtol=0)
    monkeypatch.setenv("SEGDIFF_MAX_MEMORY", "1M")
    with pytest.raises(UserError, match=r"needs about .* even one generation at a time.*--mode tile"):
        model.predict(torch.rand(3, 256, 256), **opts)


def test_training_batch_that_cannot_fit_is_refused_before_work(tiny_data, tmp_path, monkeypatch):
    from segdiff.train.loop import train

    monkeypatch.setenv("SEGDIFF_MAX_MEMORY", "1M")
    with pytest.raises(UserError, match=r"training batches of 4 x 16x16 need at least .*smaller --batch-size"):
        train(tiny_data, tmp_path / "run", tiny_config(), device="cpu", progress=False)
    assert not (tmp_path / "run" / "train_state.pt").exists()


def test_image_lock_survives_another_process_removing_the_empty_lock_folder(tmp_path, monkeypatch):
    """Split prediction: a process that finishes removes OUT/.locks when empty, maybe between another
    process's mkdir and open of its lock file; the lock is then taken on a second try, not a crash."""
    from segdiff.lock import FileLock

    real_open, calls = os.open, []

    def racing_open(path, *args):
        calls.append(path)
        if len(calls) == 1:  # the other process's rmdir wins the race once
            os.rmdir(Path(path).parent)
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", racing_open)
    lock = FileLock(tmp_path / ".locks" / "img.lock")
    assert lock.acquire()
    assert len(calls) == 2 and lock.path.is_file()
    lock.release(unlink=True)
