"""The diffusion process: schedule, forward process and loss, samplers. Knows nothing of RRDB blocks."""

from .gaussian import q_sample, training_loss, x0_from_eps
from .samplers import SAMPLERS, sample
from .schedule import Schedule, make_schedule

__all__ = ["SAMPLERS", "Schedule", "make_schedule", "q_sample", "sample", "training_loss", "x0_from_eps"]
