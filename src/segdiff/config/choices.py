"""The allowed values of every setting that is a choice among names.

One tuple per choice. They live here, on the ground floor, because the config checks them (`RunConfig.validate`)
and config may import nothing above it; the modules that implement each choice (diffusion/, train/, predict/)
import the same tuple and check that they implement every name in it, and the CLI and the benchmarks offer it.
"""

from __future__ import annotations

SAMPLERS = ("ddpm", "ddim", "dpm++")
VARIANCES = ("large", "small")
PREDICT_MODES = ("resize", "tile", "pad")
BLENDS = ("uniform", "gaussian")
AMP_MODES = ("auto", "bf16", "fp16", "fp32")
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")
SCHEDULES = ("scaled", "paper")
TIME_EMBEDDINGS = ("sinusoidal", "learned")
PREDICTIONS = ("eps", "x0", "onepass")
LR_SCHEDULES = ("constant", "cosine", "linear")
T_SAMPLINGS = ("uniform", "high_noise")
TRAIN_COMPILE = ("off", "auto", *COMPILE_MODES[1:])
