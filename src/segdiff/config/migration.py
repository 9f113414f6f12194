"""Reading config files of earlier segdiff formats: renamed keys (OLD_KEYS) are migrated, partial files merged
over defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, UserError
from .errors import ConfigError
from .overrides import apply_overrides, flatten

if TYPE_CHECKING:
    from .schema import RunConfig


# Settings that moved in the config format (old dotted key -> new), applied when reading a file.
OLD_KEYS = {
    "diffusion.variance": "predict.variance",
    "diffusion.clip_x0": "predict.clip_x0",
    "data.predict_mode": "predict.mode",
    "data.tile_stride": "predict.tile_stride",
    "data.tile_blend": "predict.blend",
    "predict.steps": "predict.sampling_steps",
    "train.val_steps": "train.val_sampling_steps",
}


def migrate(flat: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Rename the keys of earlier formats (OLD_KEYS) in a flattened config dict."""
    out = dict(flat)
    for old, new in OLD_KEYS.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise UserError(f"{source}: {old} (earlier name of {new}) and {new} disagree; keep only {new}")
            out[new] = value
    return out


def merge_dict(base: RunConfig, d: dict[str, Any], source: str = "config") -> RunConfig:
    """`base` with the fields of a (possibly partial, possibly earlier-format) config dict set."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: expected a JSON object of settings")
    try:
        return apply_overrides(base, migrate(flatten(d), source))
    except ConfigError as exc:
        raise UserError(f"{source}: {exc}") from None


def read_json(path: Path, error: type[UserError] = UserError) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON ({str(exc)[:200]}); the file is damaged or not JSON") from None
