"""The resume policy: which settings a resumed run may change, and the config it continues with."""

from __future__ import annotations

from ..errors import UserError
from .errors import format_value
from .overrides import apply_overrides, flatten
from .schema import RunConfig

# Length, cadence, time budget and data loading: they do not change what a step computes.
RESUMABLE = (
    "train.max_steps",
    "train.max_minutes",
    "train.log_every",
    "train.val_every",
    "train.save_every",
    "train.num_workers",
    "predict.compile",  # how validation runs the same network, not what a training step computes
    "predict.compile_cache",
    "train.skip_nonfinite",  # only steps whose loss or gradient is NaN/Inf act differently
    "data.volume.cache_cases",  # how many cases stay in memory, not what a step computes
)
_DERIVED = ("data.mean", "data.std")  # set from the training images when the run starts
# Decided by the data when the run starts (image channels, classes): a resumed run keeps the saved ones.
_FROM_DATA = (
    "model.image_channels",
    "model.mask_channels",
    "data.classes",
    "data.ignore_value",
    "data.ignore_color",
    "data.volume.slice_axis",
    "data.volume.intensity",
)


def resume_config(saved: RunConfig, requested: RunConfig | None) -> tuple[RunConfig, dict[str, tuple]]:
    """The config a resumed run continues with, and its changes {key: (old, new)}.

    Changes to anything but RESUMABLE are refused in one UserError naming them all. Derived fields
    left unset (None) in `requested` keep their saved values.
    """
    if requested is None:
        return saved, {}
    old, new = flatten(saved), flatten(requested)
    for k in _DERIVED:
        if new[k] is None:
            new[k] = old[k]
    for k in _FROM_DATA:
        new[k] = old[k]
    changes = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
    refused = [k for k in changes if k not in RESUMABLE]
    if refused:
        what = ", ".join(f"{k} {format_value(changes[k][0])} -> {format_value(changes[k][1])}" for k in refused)
        raise UserError(
            f"--resume: cannot change {what} in a running run (only {', '.join(RESUMABLE)} may change); "
            "leave them out, or start a new run with another --out"
        )
    return apply_overrides(saved, {k: v[1] for k, v in changes.items()}), changes
