"""How x_t and the image meet in the network: the method and the ablation variants of paper section 5.

`model.conditioning` (with `model.encoder` for G and `model.inject_after`):

    sum      the method (paper eq. 17): F(x_t) + G(I) at the U-Net's input
    concat   variant one: [F(x_t), G(I)] on the channel axis; E's first block takes 2C channels
    image    variant three: no encoder; I concatenated to x_t on the channel axis before F
    inject   variants four to six: F(x_t) enters E alone; G(I), brought to the channels and size of E's
             output after its `inject_after`-th downsampling block by that many stride-2 convs, is added there

`model.encoder = "hardnet"` is variant two (an FC-HarDNet-70 G, model/hardnet.py).

Every variant keeps the cached-G fast path (predict/ensemble.py: `encode_image` once per image, reused by
every step and generation), because what depends on the image alone is computed in `encode_image`:
G(I) for sum / concat; G(I) and the stride-2 convs for inject; the normalised image itself for image (so
"cached G" is there the identity: nothing is saved, nothing is recomputed either). Each `combine` /
`add_per_image` broadcasts one cond row over that image's generations ([B*G, ...] rows against [B, ...]).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .hardnet import HarDNetEncoder
from .rrdb import RRDBEncoder


def f_in_channels(cfg: ModelConfig) -> int:
    """The channels F reads: x_t's, the previous x0 estimate's for a self-conditioned network (issue 20), and
    the image's for the no-encoder variant."""
    mask = cfg.mask_channels * (2 if cfg.self_condition else 1)
    return mask + (cfg.image_channels if cfg.conditioning == "image" else 0)


def e_in_channels(cfg: ModelConfig) -> int:
    """The channels E's first block reads (and the first skip holds): C, or 2C for concat."""
    return 2 * cfg.model_channels if cfg.conditioning == "concat" else cfg.model_channels


def build_encoder(cfg: ModelConfig) -> nn.Module | None:
    """G: [N, image_channels, H, W] -> [N, C, H, W]; None for the no-encoder variant."""
    if cfg.conditioning == "image":
        return None
    if cfg.encoder == "hardnet":
        return HarDNetEncoder(cfg.image_channels, cfg.model_channels)
    return RRDBEncoder(cfg.image_channels, cfg.model_channels, cfg.rrdb_blocks, cfg.rrdb_nf, cfg.rrdb_gc)


class Injector(nn.Module):
    """G(I) [N, C, H, W] -> [N, c_k, H / 2^k, W / 2^k] by k stride-2 3x3 convs (SiLU between), conv i going
    to the channels of E's level i, so that the result matches E's output after its k-th downsampling."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C, k = cfg.model_channels, cfg.inject_after
        chs = [C] + [m * C for m in cfg.channel_mult[:k]]
        layers: list[nn.Module] = []
        for i in range(k):
            if i:
                layers.append(nn.SiLU())
            layers.append(nn.Conv2d(chs[i], chs[i + 1], 3, stride=2, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.convs(g)


def add_per_image(h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """h [N, ...] + cond [N or B, ...]: with B < N, row b of cond goes to rows b*N/B .. (b+1)*N/B - 1 of h
    (the generations of image b), without copying cond."""
    n, b = h.shape[0], cond.shape[0]
    cond = cond.to(h.dtype)
    if n == b:
        return h + cond
    return (h.view(b, n // b, *h.shape[1:]) + cond[:, None]).view_as(h)


def rows_per_image(cond: torch.Tensor, n: int) -> torch.Tensor:
    """cond [B, ...] -> [N, ...], each image's row repeated for its N/B generations (concatenation needs
    real rows)."""
    b = cond.shape[0]
    return cond if b == n else cond.repeat_interleave(n // b, dim=0)


def combine(cfg: ModelConfig, f: nn.Module, x_t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """E's input from x_t [N, M, H, W] and cond (`encode_image`'s output) by `cfg.conditioning`."""
    if cfg.conditioning == "sum":
        return add_per_image(f(x_t), cond)
    if cfg.conditioning == "concat":
        fx = f(x_t)
        return torch.cat([fx, rows_per_image(cond, fx.shape[0]).to(fx.dtype)], dim=1)
    if cfg.conditioning == "image":
        return f(torch.cat([x_t, rows_per_image(cond, x_t.shape[0]).to(x_t.dtype)], dim=1))
    return f(x_t)  # inject: cond joins after the inject_after-th downsampling block
