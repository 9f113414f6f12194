"""SegDiff: image segmentation with diffusion probabilistic models (Amit et al., 2021)."""

from .version import __version__


def __getattr__(name):
    # lazy, so that `import segdiff` and the CLI's --help stay fast
    if name in ("SegDiff", "Prediction", "Predictor"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)


__all__ = ["SegDiff", "Prediction", "Predictor", "__version__"]
