"""The diffusion process: schedule, forward process and loss, samplers. Knows nothing of RRDB blocks."""

from .gaussian import predict_x0, q_sample, training_loss
from .samplers import SAMPLERS, sample
from .schedule import Schedule, make_schedule

__all__ = ["SAMPLERS", "Schedule", "make_schedule", "predict_x0", "q_sample", "sample", "training_loss"]
