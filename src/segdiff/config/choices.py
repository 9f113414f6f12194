"""The allowed values of every setting that is a choice among names, one tuple per choice.

Why here and not beside the code that implements each choice: the config checks these values when a file or
`--set` is read (`RunConfig.validate`, a ConfigError naming the key before any work starts), and config is
the ground floor, which may import nothing above it. So each tuple lives on the ground floor, and the module
that implements the choice (named beside it) imports it from here and refuses a name it does not know with
the same list; the CLI, the web page and the benchmarks offer the same tuple (tests/test_choices.py checks
that every implementation covers its tuple and every parser offers exactly it).
"""

from __future__ import annotations

SAMPLERS = ("ddpm", "ddim", "dpm++")  # diffusion.samplers.sample
VARIANCES = ("large", "small")  # diffusion.schedule.Schedule.sigma2 (the ddpm sampler's)
PREDICT_MODES = ("resize", "tile", "pad")  # predict.predictor
BLENDS = ("uniform", "gaussian")  # predict.tiling
AMP_MODES = ("auto", "bf16", "fp16", "fp32")  # predict.ensemble
# torch.compile of the prediction network (predict.compiling) and of the training step (train.schedule.
# should_compile): "auto" decides by the work ahead, "off" never compiles, the others are torch.compile modes
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead", "max-autotune")
SCHEDULES = ("scaled", "paper")  # diffusion.schedule.linear_betas
TIME_EMBEDDINGS = ("sinusoidal", "learned")  # model.embeddings
PREDICTIONS = ("eps", "x0", "onepass")  # diffusion.gaussian.training_loss, predict.ensemble
# model.conditioning, how x_t and I meet: the method and the ablation variants of paper section 5 (model.fusion)
CONDITIONINGS = ("sum", "concat", "image", "inject")
ENCODERS = ("rrdb", "hardnet")  # model.encoder: G (model.fusion.build_encoder)
LR_SCHEDULES = ("constant", "cosine", "linear")  # train.schedule.learning_rate
T_SAMPLINGS = ("uniform", "high_noise")  # diffusion.schedule.sample_timestep
X0_OUTPUTS = ("direct", "logits")  # model.x0_output: how an x0 network's output becomes x0 (model.unet)
