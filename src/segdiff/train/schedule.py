"""What a run does as a function of its step: the learning rate, the time budget turned into steps, and
whether to compile the training step.

Everything here depends on the step count and the config only (never on the clock once max_steps is
fixed), so that an interrupted and resumed run follows exactly the same schedule.
"""

from __future__ import annotations

import math

from ..config import COMPILE_MODES, LR_SCHEDULES

# `compile: auto`: torch.compile of the training step pays back when the time it saves exceeds the time it
# costs. With a compile time c and a speed-up s of the compiled step, a budget of B seconds of training does
# (B - c) * s steps' worth of work instead of B: compiling wins when B > c * s / (s - 1). The constants are
# ESTIMATES (issue 9: about 60 s to compile the monuseg network for inference, 2.4x faster inference on an
# H200; a training step compiles forward and backward, so c is taken larger and s smaller): not measured
# for training on a GPU by this package yet; `segdiff benchmark --train-compile` measures both.
COMPILE_SECONDS_ESTIMATE = 120.0
COMPILE_SPEEDUP_ESTIMATE = 1.5


def learning_rate(tc, step: int) -> float:
    """Learning rate of optimizer step `step` (0-based) under TrainConfig `tc`.

    Linear warm-up over warmup_steps (lr * (step + 1) / warmup_steps), then "constant" lr, or a "cosine"
    or "linear" decay from lr to lr_min that reaches lr_min at max_steps. The decay starts at
    `decay_start(tc)`: after the warm-up and, in a budget run, after the steps that measure the
    throughput (max_steps is not known before them, and the lr of a step must never depend on the clock).
    """
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    if tc.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {tc.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    d0 = decay_start(tc)
    if step < d0:
        return tc.lr
    frac = min(1.0, (step - d0) / max(1, tc.max_steps - d0))
    if tc.lr_schedule == "cosine":
        return tc.lr_min + (tc.lr - tc.lr_min) * 0.5 * (1.0 + math.cos(math.pi * frac))
    return tc.lr - (tc.lr - tc.lr_min) * frac


def probe_end(tc) -> int:
    """The step at which a budget run fixes max_steps (0 without a budget)."""
    return tc.budget_warmup_steps + tc.budget_probe_steps if tc.budget_minutes is not None else 0


def decay_start(tc) -> int:
    return max(tc.warmup_steps, probe_end(tc))


def steps_for_budget(budget_s: float, elapsed_s: float, probe_s: float, probe_steps: int, done_steps: int) -> int:
    """The fixed max_steps of a budget run.

    budget_s: the training budget; elapsed_s: wall time since the run started, at the moment of the fix
    (compile and warm-up included); probe_s / probe_steps: time and number of the measured steps (after
    the warm-up steps, so without compile); done_steps: steps done at the fix. The steps left are those
    the measured rate fits in the time left, floor((budget_s - elapsed_s) / (probe_s / probe_steps)); the
    steps already done are never undone (max_steps >= done_steps).
    """
    if probe_steps < 1 or probe_s <= 0:
        raise ValueError("the throughput probe needs at least one step of positive duration")
    per_step = probe_s / probe_steps
    left = max(0.0, budget_s - elapsed_s)
    return done_steps + int(math.floor(left / per_step))


def should_compile(choice: str, device_type: str, budget_minutes: float | None) -> str:
    """The torch.compile mode to use ("off" or a mode) for TrainConfig.compile = `choice`.

    "auto": compile ("default" mode) only on CUDA, and only when the run is long enough to repay the
    compile time: no budget (a run of max_steps, typically hours), or a budget B with
    B * 60 > COMPILE_SECONDS_ESTIMATE * s / (s - 1), s = COMPILE_SPEEDUP_ESTIMATE (6 minutes with the
    constants above). On a CPU "auto" never compiles (exact resume is a CPU guarantee of the eager step).
    """
    if choice not in COMPILE_MODES:
        raise ValueError(f"compile {choice!r}: choose one of {', '.join(COMPILE_MODES)}")
    if choice != "auto":
        return choice
    if device_type != "cuda":
        return "off"
    if budget_minutes is None:
        return "default"
    s = COMPILE_SPEEDUP_ESTIMATE
    return "default" if budget_minutes * 60 > COMPILE_SECONDS_ESTIMATE * s / (s - 1) else "off"
