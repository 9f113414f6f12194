"""The run's log: metrics.jsonl (one JSON object per line), log.txt, and curves.png."""

from __future__ import annotations

import json
import time
from pathlib import Path


class RunLog:
    """Appends to RUN/metrics.jsonl and RUN/log.txt; on resume, drops lines past the resumed step."""

    def __init__(self, run: Path, enabled: bool = True, resume_step: int | None = None):
        self.run, self.enabled = Path(run), enabled
        self.jsonl, self.txt = self.run / "metrics.jsonl", self.run / "log.txt"
        if enabled and resume_step is not None and self.jsonl.is_file():
            kept = [
                line
                for line in self.jsonl.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.jsonl.write_text("".join(line + "\n" for line in kept))
        elif enabled and resume_step is None:
            self.jsonl.write_text("")

    def record(self, **row) -> None:
        if self.enabled:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")

    def text(self, msg: str) -> None:
        if self.enabled:
            with open(self.txt, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    def rows(self) -> list[dict]:
        if not self.jsonl.is_file():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]


def plot_curves(rows: list[dict], path: Path) -> None:
    """Training loss (and its running mean) and validation IoU of raw and EMA weights against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train" and r.get("loss") is not None]
    val = [r for r in rows if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    axes[0].set(xlabel="step", ylabel="loss (MSE of eps)", yscale="log", title="training loss")
    for name in ("raw", "ema"):
        pts = [(r["step"], r[f"{name}_iou"]) for r in val if f"{name}_iou" in r]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=name)
    axes[1].set(xlabel="step", ylabel="IoU", title="validation IoU")
    if val:
        axes[1].legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
