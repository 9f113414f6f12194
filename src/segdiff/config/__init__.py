"""Typed configuration of a run, and the named presets of the paper.

A run is one `RunConfig`; it is written as config.json beside the weights and read back by
`SegDiff.load`. Presets are named configs, not code paths. Every field can be set from a JSON file
(`segdiff train --config FILE`) or the command line (`--set data.size=64 model.channel_mult=1,2,2`):
`apply_overrides` parses and type-checks dotted keys, `RunConfig.validate` checks the values. Configs
are never changed in place: the dataclasses are frozen, and overrides build a new one with
`dataclasses.replace` (a config handed to a function is the config it was).

`PredictConfig` is the whole prediction protocol (generations, sampling steps, sampler, variance,
windows, precision, seed); the samplers and the predictor take it as it is.

The parts, one module each: `schema` (the dataclasses and their checks), `choices` (the allowed values of
the settings that name a choice), `errors` (ConfigError), `overrides` (the text / JSON coercion of `--set`),
`migration` (config files of earlier formats), `resume` (which settings a resumed run may change),
`presets` (the named configs). Every public name is importable from `segdiff.config`.
"""

from __future__ import annotations

from .choices import (
    AMP_MODES,
    BLENDS,
    COMPILE_MODES,
    CONDITIONINGS,
    ENCODERS,
    LR_SCHEDULES,
    PREDICT_MODES,
    PREDICTIONS,
    SAMPLERS,
    SCHEDULES,
    T_SAMPLINGS,
    TIME_EMBEDDINGS,
    VARIANCES,
    X0_OUTPUTS,
)
from .errors import ConfigError
from .migration import OLD_KEYS, merge_dict, migrate, read_json
from .overrides import SET_BY_THE_RUN, apply_overrides, field_keys, flatten, parse_assignments
from .presets import PAPER_PRESETS, PRESETS, preset
from .resume import RESUMABLE, resume_config
from .schema import (
    AugmentConfig,
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    PredictConfig,
    RunConfig,
    TrainConfig,
    VolumeConfig,
    chain_length,
)

__all__ = [
    "AMP_MODES",
    "BLENDS",
    "COMPILE_MODES",
    "CONDITIONINGS",
    "ENCODERS",
    "LR_SCHEDULES",
    "OLD_KEYS",
    "PAPER_PRESETS",
    "PREDICTIONS",
    "PREDICT_MODES",
    "PRESETS",
    "RESUMABLE",
    "SAMPLERS",
    "SET_BY_THE_RUN",
    "SCHEDULES",
    "TIME_EMBEDDINGS",
    "T_SAMPLINGS",
    "VARIANCES",
    "X0_OUTPUTS",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "ModelConfig",
    "PredictConfig",
    "RunConfig",
    "TrainConfig",
    "VolumeConfig",
    "apply_overrides",
    "chain_length",
    "field_keys",
    "flatten",
    "merge_dict",
    "migrate",
    "parse_assignments",
    "preset",
    "read_json",
    "resume_config",
]
