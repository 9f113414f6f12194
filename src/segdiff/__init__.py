"""SegDiff: image segmentation with diffusion probabilistic models (Amit et al., 2021)."""

__version__ = "0.1.0"
