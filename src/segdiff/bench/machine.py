"""The machine a benchmark ran on, and the device it runs on: one `environment()` for every report
(`segdiff benchmark`, `segdiff study`, the MoNuSeg benchmark) and one check of a --device flag."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

from ..devices import default_device
from ..errors import UserError
from ..version import __version__


def bench_device(flag: str | None, default: str | None = None) -> torch.device:
    """The device named by a --device flag (None: `default`, else segdiff.devices.default_device's choice);
    a CUDA device on a machine without CUDA is a UserError naming the flag."""
    device = default_device(flag if flag is not None else default)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {flag or device}: no CUDA device is available")
    return device


def _git_state() -> dict:
    """The commit of the checkout segdiff runs from, and whether tracked files differ from it; None when
    segdiff is not imported from a git checkout (an installed wheel)."""
    root = Path(__file__).resolve().parents[3]  # src/segdiff/bench/machine.py -> the checkout
    if not (root / ".git").exists() or not (root / "src" / "segdiff").is_dir():
        return {"git_commit": None}
    try:  # read-only queries
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def environment(device: torch.device) -> dict:
    """Device, software versions and the settings that change speed (CUDA: cuDNN autotuning, TF32), and the
    git commit when segdiff runs from a checkout."""
    device = torch.device(device)
    env = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "segdiff": __version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        env.update(
            device_name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    else:
        env["device_name"] = env["cpu"]
    env.update(_git_state())
    return env
