"""Atomic writes of the run folder: weights as safetensors, training state as plain types.

A file is written to a temporary name in the same folder and renamed over the old one, so a crash
leaves either the old or the new file, never a torn one. A checkpoint's files carry its step and are
checked against each other on resume.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def write_files(files: dict[Path, object]) -> None:
    """Write several files (a state dict -> safetensors with metadata, or a picklable-plain dict -> torch
    file) to temporary names first, then rename them all: the window in which a crash can leave files
    of two different steps is a few renames long, and resume detects it by the step they carry."""
    staged = []
    try:
        for path, (obj, meta) in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_path(path)
            staged.append((tmp, path))
            if path.suffix == ".safetensors":
                save_file(obj, str(tmp), metadata={k: str(v) for k, v in meta.items()})
            else:
                torch.save(obj, tmp)
        for tmp, path in staged:
            _replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc}); the file is damaged or not safetensors") from None


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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training state not found; cannot resume (train without --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read training state ({type(exc).__name__}: {exc})") from None
