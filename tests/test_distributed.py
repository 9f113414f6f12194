"""DDP on the CPU: gloo backend, 2 processes under torchrun (issue 5, scale-out).

(a) 2 ranks x 2 samples give the weights of 1 rank x 4 samples (dropout off, fp32; tolerance 1e-5),
    only rank 0 writes, and validation over an odd number of images counts each image once;
(b) an interrupted 2-rank run of the real CLI (`torchrun -m segdiff train`) resumes to the same weights
    as an uninterrupted one;
(c) a split prediction (--num-parts/--part-id, and under torchrun) writes every image exactly once, and
    a restarted prediction skips the images already written.

This file is also the launcher that torchrun runs for (a):
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/test_distributed.py DATA RUN
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

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5  # max |w_2ranks - w_1rank| over all weights (fp32, 4 AdamW steps); measured ~1e-7 on CPU
STEPS = 4


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
    }
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(args: list[str], nproc: int | None = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python ARGS`, or `python -m torch.distributed.run --standalone --nproc_per_node N ARGS`."""
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [sys.executable, *launcher, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for name in ("model", "ema"):
        out.update({f"{name}.{k}": v for k, v in load_file(str(run / f"{name}.safetensors")).items()})
    return out


def _rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)), "duplicated lines in metrics.jsonl: more than one rank wrote"
    return [json.loads(line) for line in lines]


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


# -- the launcher run by torchrun (and by plain python for the 1-process reference) ------------------


def _launch(data: str, run: str) -> None:
    import torch.distributed as dist

    from conftest import tiny_config
    from segdiff.api import SegDiff
    from segdiff.data.dataset import load_pair, make_splits
    from segdiff.train.distributed import init_distributed
    from segdiff.train.loop import train
    from segdiff.train.validation import validate

    torch.set_num_threads(1)
    cfg = tiny_config(max_steps=STEPS, val_every=2, save_every=2, log_every=1)  # batch 4, dropout 0
    summary = train(data, run, cfg, device="cpu", progress=False)
    # train created the process group (under torchrun) and destroyed it at its end
    assert not dist.is_initialized()
    # validate the final weights once more in a group created here, as a caller would: init_distributed
    # then joins the caller's group and leaves it to the caller
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    info = init_distributed("cpu")
    assert not info.owns_group and info.world == int(os.environ.get("WORLD_SIZE", "1"))
    model = SegDiff.load(run, weights="raw", device="cpu")
    val = [load_pair(s, model.classes, model.config.model.image_channels) for s in make_splits(Path(data), 0.1, 0).val]
    scores = validate(model.predictor, val, info)
    if info.main:
        Path(f"{run}.val.json").write_text(json.dumps({"summary": summary, "val": scores, "world": info.world}))
    if dist.is_initialized():
        dist.destroy_process_group()


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """1-process and 2-process runs of the tiny test config on the same data (val: 3 images, odd)."""
    from conftest import make_dataset

    base = tmp_path_factory.mktemp("dist")
    data = make_dataset(base / "data", splits=(("train", 6), ("val", 3), ("test", 5)))
    times = {}
    for name, nproc in (("one", None), ("two", 2)):
        t0 = time.time()
        _run([str(Path(__file__).resolve()), str(data), str(base / name)], nproc=nproc)
        times[name] = time.time() - t0
    print(f"\nlauncher runs: 1 process {times['one']:.1f} s, 2 processes {times['two']:.1f} s")
    return data, base / "one", base / "two"


# -- (a) ------------------------------------------------------------------------------------------


def test_two_ranks_match_one_rank(runs):
    _, one, two = runs
    w1, w2 = _weights(one), _weights(two)
    assert w1.keys() == w2.keys()
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    print(f"\nmax |w(2 ranks x 2) - w(1 rank x 4)| after {STEPS} steps: {diff:.3g} (tolerance {TOL})")
    assert diff <= TOL, f"2-rank weights differ from 1-rank weights by {diff}"
    # the steps did move the weights (the EMA lags behind them), so the comparison is not vacuous
    moved = max(float((w2[k] - w2["ema." + k[6:]]).abs().max()) for k in w2 if k.startswith("model."))
    assert moved > 10 * TOL
    r1, r2 = _rows(one), _rows(two)
    assert [(r["kind"], r["step"]) for r in r1] == [(r["kind"], r["step"]) for r in r2]
    assert len([r for r in r2 if r["kind"] == "train"]) == STEPS
    assert len([r for r in r2 if r["kind"] == "val"]) == STEPS // 2
    for a, b in zip(r1, r2):
        if a["kind"] == "train":  # the mean loss of the global batch, reduced over the ranks
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7)
        else:
            for k in ("raw_iou", "raw_f1", "ema_iou", "ema_f1"):
                assert b[k] == pytest.approx(a[k], abs=1e-6), k


def test_only_rank_zero_writes(runs):
    _, one, two = runs
    assert _files(one) == _files(two)
    log = (two / "log.txt").read_text()
    assert log.count(" started: ") == 1 and log.count(" finished at step ") == 1
    assert "2 process(es)" in log and "1 process(es)" in (one / "log.txt").read_text()
    st = torch.load(two / "train_state.pt", weights_only=True)
    assert st["step"] == STEPS and st["world"] == 2


def test_validation_counts_each_image_once(runs):
    _, one, two = runs
    v1 = json.loads(Path(f"{one}.val.json").read_text())
    v2 = json.loads(Path(f"{two}.val.json").read_text())
    assert (v1["world"], v2["world"]) == (1, 2)
    assert v1["val"]["n"] == v2["val"]["n"] == 3  # 3 images over 2 ranks: 2 + 1, none twice
    for k in ("iou", "f1"):
        assert v2["val"][k] == pytest.approx(v1["val"][k], abs=1e-6)
    assert v2["summary"]["step"] == STEPS and v2["summary"]["stopped_by"] == "max_steps"


# -- (b) the real CLI under torchrun ---------------------------------------------------------------


def test_cli_torchrun_resume_matches_uninterrupted(tmp_path):
    import shutil

    from conftest import make_dataset

    data = make_dataset(tmp_path / "data", splits=(("train", 6),), size=32)
    common = ["-m", "segdiff", "train", "--data", str(data)]
    common += "--preset tiny --batch-size 4 --val-fraction 0 --device cpu --quiet".split()
    t0 = time.time()
    full = _run([*common, "--out", str(tmp_path / "full"), "--max-steps", "4"])
    t1 = time.time()
    _run([*common, "--out", str(tmp_path / "part"), "--max-steps", "2"])
    shutil.copytree(tmp_path / "part", tmp_path / "part1")
    resumed = _run([*common, "--out", str(tmp_path / "part"), "--max-steps", "4", "--resume"])
    t2 = time.time()
    # the same run resumed by one process (plain `segdiff train`): the same up to rounding
    _run([*common, "--out", str(tmp_path / "part1"), "--max-steps", "4", "--resume"], nproc=None)
    print(
        f"\nCLI torchrun x2: 4 steps {t1 - t0:.1f} s; 2 steps + resume to 4: {t2 - t1:.1f} s; "
        f"resume on 1 process {time.time() - t2:.1f} s"
    )
    for proc in (full, resumed):  # every rank returned the same summary
        summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert summaries and all(s["step"] == 4 for s in summaries)
    a, b, c = _weights(tmp_path / "full"), _weights(tmp_path / "part"), _weights(tmp_path / "part1")
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise: same ops in the same order
    diff = max(float((a[k] - c[k]).abs().max()) for k in a)
    print(f"max |w(2 ranks, resumed on 2) - w(2 ranks, resumed on 1)|: {diff:.3g}")
    assert diff <= TOL
    assert torch.load(tmp_path / "part" / "train_state.pt", weights_only=True)["step"] == 4
    rows = _rows(tmp_path / "part")
    assert [r["step"] for r in rows if r["kind"] == "train"] == [2, 4]
    log = (tmp_path / "part" / "log.txt").read_text()
    assert log.count("resumed at step 2") == 1 and "2 process(es)" in log


# -- (c) split prediction -------------------------------------------------------------------------


def test_split_prediction_writes_every_image_once_and_skips_on_restart(runs, tmp_path):
    from segdiff.api import SegDiff
    from segdiff.data.folder import list_images
    from segdiff.predict.run import predict_folder

    data, _, two = runs
    images = data / "test" / "images"
    stems = sorted(p.stem for p in list_images(images))
    out = tmp_path / "pred"

    def written() -> list[str]:
        return sorted(p.stem for p in (out / "masks").glob("*.png"))

    # part 1 of 2 under torchrun with 2 processes: each rank predicts its share of the part (parts 1, 3 of 4)
    _run(
        [
            "-m",
            "segdiff",
            "predict",
            "--checkpoint",
            str(two),
            "--input",
            str(images),
            "--out",
            str(out),
            "--num-parts",
            "2",
            "--part-id",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert written() == stems[1::2]
    parts = [json.loads((out / f"predict.part{i}of4.json").read_text()) for i in (1, 3)]
    assert [p["predicted"] for p in parts] == [1, 1]

    # part 0 of 2 in this process
    model = SegDiff.load(two, device="cpu")
    s0 = predict_folder(model, images, out, num_parts=2, part_id=0, progress=False)
    assert (s0["images"], s0["predicted"], s0["skipped"]) == (3, 3, 0)
    assert written() == stems  # every image exactly once: 2 + 3 predictions for 5 images
    assert len(list((out / "prob").glob("*.tif"))) == len(stems)

    # restart under torchrun over the whole folder: only the image whose mask was lost is predicted again
    lost = out / "masks" / f"{stems[2]}.png"
    before = lost.read_bytes()
    lost.unlink()
    _run(
        [
            "-m",
            "segdiff",
            "predict",
            "--checkpoint",
            str(two),
            "--input",
            str(images),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    summaries = [json.loads((out / f"predict.part{i}of2.json").read_text()) for i in (0, 1)]
    assert sum(s["images"] for s in summaries) == len(stems)
    assert sum(s["predicted"] for s in summaries) == 1 and sum(s["skipped"] for s in summaries) == 4
    assert written() == stems
    assert lost.read_bytes() == before  # keyed by the image's stem: the same mask in any part or process

    # a restart of part 0 in this process finds everything written
    again = predict_folder(model, images, out, num_parts=2, part_id=0, progress=False)
    assert (again["predicted"], again["skipped"]) == (0, 3)


if __name__ == "__main__":
    _launch(*sys.argv[1:3])


def test_prediction_under_torchrun_uses_the_local_rank_gpu(tmp_path, monkeypatch):
    """`segdiff predict --device cuda` (or the default on a GPU machine) under torchrun: rank r loads the
    model onto cuda:LOCAL_RANK, not all ranks onto cuda:0 (checked without a GPU: the device is chosen by
    segdiff.devices.default_device, which every loader uses), and predicts its share of the folder."""
    from conftest import make_dataset, tiny_config
    from segdiff.api import SegDiff
    from segdiff.devices import default_device
    from segdiff.predict.run import predict_folder

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert default_device("cuda") == torch.device("cuda", 1)
    assert default_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert default_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("LOCAL_RANK")
    assert default_device("cuda") == torch.device("cuda")  # alone: the current GPU

    data = make_dataset(tmp_path / "data", splits=(("test", 4),))
    out = tmp_path / "pred"
    (out / "masks").mkdir(parents=True)
    for i in range(4):  # all written already: nothing runs
        (out / "masks" / f"img{i:02d}.png").write_bytes(b"")
    model = SegDiff(tiny_config(), "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    summary = predict_folder(model, data / "test" / "images", out, progress=False)
    assert model.device == torch.device("cpu") and summary["device"] == "cpu"  # the model is not moved
    assert (summary["images"], summary["skipped"], summary["part"]) == (2, 2, [1, 2])
    assert (out / "predict.part1of2.json").is_file()
