"""The noise predictor eps_theta(x_t, I, t) = D(E(F(x_t) + G(I), t), t). Knows nothing of betas."""

from .unet import SegDiffUNet

__all__ = ["SegDiffUNet"]
