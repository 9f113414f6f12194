"""The noise predictor eps_theta(x_t, I, t) = D(E(F(x_t) + G(I), t), t). Knows nothing of betas."""

from .build import build_network
from .unet import Layout, Level, SegDiffUNet, layout

__all__ = ["Layout", "Level", "SegDiffUNet", "build_network", "layout"]
