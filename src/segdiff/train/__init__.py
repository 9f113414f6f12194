"""Training: the loop, EMA, checkpoints and the run folder."""
