"""Everything that reads or writes a run folder's weights and training state (training saves and resumes
through it; prediction loads weights through it).

The run folder's checkpoint: weights as safetensors, training state as plain types, each with a
SHA-256 digest of its content, written so that a crash at any moment keeps a complete checkpoint.

A checkpoint is three files that carry its step: model.safetensors, ema.safetensors, train_state.pt.
Saving writes all three to temporary names first; then, file by file, the old file is renamed to
NAME.prev.EXT and the new one into place; the .prev files are removed once all three new files are in
place. A crash at any moment therefore leaves, among NAME and NAME.prev, a complete set of one step:
resume (`find_checkpoint`) picks the newest complete set and tidies the folder. A failed write (disk
full) removes its temporary files and leaves the old checkpoint untouched.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import faults
from .atomic import fsync_dir, stale_temps, write_temp
from .errors import CheckpointError, UserError

CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "train_state.pt")
# the weights a run folder offers for prediction: best on validation, the EMA weights, the raw weights
WEIGHT_FILES = {"best": "best.safetensors", "ema": "ema.safetensors", "raw": "model.safetensors"}


def prev_path(path: Path) -> Path:
    """model.safetensors -> model.prev.safetensors: the previous checkpoint's file while a save runs."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def digest(obj) -> str:
    """SHA-256 of a state dict / nested training state: keys, types, shapes and every tensor's bytes."""
    h = hashlib.sha256()

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}".encode())
            h.update(t.view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


def _write_temp(path: Path, obj, meta: dict) -> Path:
    if path.suffix == ".safetensors":
        md = {k: str(v) for k, v in meta.items()} | {"sha256": digest(obj)}
        return write_temp(path, lambda p: save_file(obj, str(p), metadata=md))
    return write_temp(path, lambda p: torch.save({**obj, "sha256": digest(obj)}, p))


def write_files(files: dict[Path, object]) -> None:
    """Write several files (a state dict -> safetensors with metadata, or a dict of plain types and
    tensors -> torch file), each atomically: all to temporary names first, then renamed."""
    staged = []
    try:
        for path, (obj, meta) in files.items():
            staged.append((_write_temp(Path(path), obj, meta), Path(path)))
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def write_checkpoint(files: dict[Path, object]) -> None:
    """Replace a checkpoint's files as a set (module docstring): the previous set stays complete on disk
    until every new file is in place."""
    staged = []
    try:
        for path, (obj, meta) in files.items():
            for old in stale_temps(path):  # left by a killed writer
                old.unlink(missing_ok=True)
            staged.append((_write_temp(Path(path), obj, meta), Path(path)))
        faults.point("checkpoint.staged")
        for tmp, path in staged:
            if path.exists():
                os.replace(path, prev_path(path))
                faults.point("checkpoint.between")
            os.replace(tmp, path)
            faults.point("checkpoint.between")
        fsync_dir(staged[0][1].parent)
        for _, path in staged:
            prev_path(path).unlink(missing_ok=True)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def _damaged(path: Path, exc) -> CheckpointError:
    return CheckpointError(f"{path}: cannot read ({exc}); the file is truncated, damaged or not a segdiff file")


def read_weights_meta(path: Path) -> dict[str, str]:
    """The metadata of a weights file (its header only)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, exc) from None


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file (no code runs on load) and check its digest when it carries one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    meta = read_weights_meta(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _damaged(path, exc) from None
    if "sha256" in meta and digest(state) != meta["sha256"]:
        raise CheckpointError(f"{path}: the weights do not match their SHA-256 digest; the file is damaged")
    return state, meta


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, turning a shape or key mismatch into a message about the configuration."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        detail = (
            f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
            if unexpected
            else f"shape of {bad[0]}: file {tuple(state[bad[0]].shape)} vs config {tuple(own[bad[0]].shape)}"
        )
        raise CheckpointError(
            f"{source}: weights do not match the configuration in config.json ({detail}); "
            "the checkpoint comes from another configuration"
        )
    module.load_state_dict(state)


def read_train_state(path: Path) -> dict:
    """Load train_state.pt with weights_only=True (plain types and tensors: no code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found; cannot resume (train without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip, unpickling and weights_only errors come in many types
        raise CheckpointError(
            f"{path}: cannot read training state ({type(exc).__name__}: {str(exc)[:200]}); the file is "
            "truncated, damaged or not a segdiff file"
        ) from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a segdiff training state")
    expected = state.pop("sha256", None)
    if expected is not None and digest(state) != expected:
        raise CheckpointError(f"{path}: the training state does not match its SHA-256 digest; the file is damaged")
    return state


def find_checkpoint(run: Path) -> tuple[int, dict[str, Path], dict]:
    """The newest complete checkpoint of a run folder: (step, {name: file}, training state), or
    (0, {}, {}) when the run never completed a save.

    Each of model, ema and train_state is taken from NAME or NAME.prev (a save was interrupted); the
    step is the newest that all three have. Unreadable files are passed over for an older complete set;
    if there is none, the error names what was found.
    """
    run = Path(run)
    found: dict[str, dict[int, Path]] = {n: {} for n in CHECKPOINT_FILES}
    states: dict[Path, dict] = {}
    problems: list[str] = []
    for name in CHECKPOINT_FILES:
        for path in (run / name, prev_path(run / name)):
            if not path.is_file():
                continue
            try:
                if name == "train_state.pt":
                    states[path] = read_train_state(path)
                    step = int(states[path]["step"])
                else:
                    step = int(read_weights_meta(path).get("step", -1))
            except CheckpointError as exc:
                problems.append(str(exc))
                continue
            found[name][step] = path
    if (
        not found["train_state.pt"]
        and not problems
        and not any(p.exists() for p in (run / "train_state.pt", prev_path(run / "train_state.pt")))
    ):
        # no training state was ever completed (it is renamed into place last): the first save was
        # interrupted, or none was made; the run starts again from step 0, which it reproduces exactly
        return 0, {}, {}
    common = set.intersection(*(set(v) for v in found.values()))
    if not common:
        if problems:
            raise CheckpointError(problems[0] + "; no complete checkpoint is left to resume from")
        desc = ", ".join(f"{n} (step {', '.join(map(str, sorted(found[n]))) or 'none'})" for n in CHECKPOINT_FILES)
        raise CheckpointError(f"{run}: {desc} disagree; no complete checkpoint to resume from")
    step = max(common)
    paths = {n: found[n][step] for n in CHECKPOINT_FILES}
    return step, paths, states[paths["train_state.pt"]]


def tidy_checkpoint(run: Path, paths: dict[str, Path]) -> None:
    """Make the chosen checkpoint the run folder's NAME files; remove .prev files and killed writers' temporaries."""
    run = Path(run)
    for name in CHECKPOINT_FILES:
        target = run / name
        if name not in paths:  # no complete save yet: files of an interrupted first save go
            target.unlink(missing_ok=True)
        elif paths[name] != target:
            os.replace(paths[name], target)
        prev_path(target).unlink(missing_ok=True)
    for tmp in run.glob(".*.partial-*"):  # the caller holds the run's lock: no other writer is alive
        tmp.unlink(missing_ok=True)
    fsync_dir(run)


def weights_path(run: Path, weights: str = "best") -> Path:
    """The weights file of a run folder to predict with. weights: "best" (best on validation; when the run
    has none yet, ema, then raw), "ema" or "raw". A file whose save was interrupted is taken from its .prev
    copy. Only presence is checked here: a damaged file is an error when it is read, never a fall-back."""
    run = Path(run)
    if weights not in WEIGHT_FILES:
        raise UserError(f"weights={weights!r}: choose one of {', '.join(WEIGHT_FILES)}")
    order = {"best": ["best", "ema", "raw"], "ema": ["ema"], "raw": ["raw"]}[weights]
    for name in order:
        path = run / WEIGHT_FILES[name]
        if not path.is_file() and prev_path(path).is_file():  # a checkpoint save was interrupted
            path = prev_path(path)
        if path.is_file():
            return path
    raise CheckpointError(f"{run}: no weights ({', '.join(WEIGHT_FILES[n] for n in order)}) in this run folder")
