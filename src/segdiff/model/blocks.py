"""U-Net building blocks of E and D (paper 4.3; improved-diffusion's ResBlock and AttentionBlock)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with `groups` groups, or the largest divisor of `channels` below it (narrow test models)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels)


def zero_module(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; + Linear(SiLU(emb)); GroupNorm, SiLU, dropout, zero-init conv; + skip."""

    def __init__(self, ch: int, emb_dim: int, out_ch: int, dropout: float, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(
            group_norm(out_ch, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip = nn.Identity() if ch == out_ch else nn.Conv2d(ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual, zero-init projection.

    q, k, v reach scaled_dot_product_attention as [N, heads, L, C/heads] views whose last dimension is
    contiguous (stride 1): only then are the fused kernels (flash / memory-efficient, on the CPU and on
    CUDA) eligible, which never hold the [L, L] scores. A last dimension of stride L (the 1x1 convolution's
    [N, 3C, L] output split by heads) sends every call to the math kernel: 17.4 GB for one
    [4 heads, 22500 positions] call on the CPU against 17 MB. The projections are therefore applied
    position-major ([N, L, C] @ W^T), with the 1x1 convolutions' weights, so checkpoints load unchanged.
    """

    def __init__(self, ch: int, num_heads: int, groups: int):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"attention channels {ch} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)  # applied as a linear layer: see the class docstring
        self.proj = zero_module(nn.Conv1d(ch, ch, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).reshape(n, c, h * w).transpose(1, 2)  # [N, L, C]
        qkv = F.linear(tokens, self.qkv.weight[:, :, 0], self.qkv.bias)  # [N, L, 3C], contiguous
        q, k, v = qkv.reshape(n, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, L, C/heads]
        out = F.linear(out.transpose(1, 2).reshape(n, h * w, c), self.proj.weight[:, :, 0], self.proj.bias)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class Downsample(nn.Module):
    """Stride-2 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2, then 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.ModuleList):
    """A list of blocks applied in order, each taking (x, emb): the time embedding reaches every block
    (unlike nn.Sequential, whose blocks take one input)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb)
        return x
