"""G: the RRDB image encoder of ESRGAN (Wang et al. 2018), as SegDiff uses it (paper 4.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualDenseBlock(nn.Module):
    """Five convs with dense connections; output scaled by 0.2 and added to the input."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc, 3, padding=1) for i in range(4))
        self.conv_last = nn.Conv2d(nf + 4 * gc, nf, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.conv_last(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, scaled by 0.2, plus the input."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualDenseBlock(nf, gc) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.blocks(x)


class RRDBEncoder(nn.Module):
    """G(I): conv, [n RRDB, trunk conv] with a residual around them, conv, leaky ReLU, conv to C.

    [N, in_ch, H, W] -> [N, out_ch, H, W] at full resolution.
    """

    def __init__(self, in_ch: int, out_ch: int, n_blocks: int, nf: int = 64, gc: int = 32):
        super().__init__()
        self.conv_first = nn.Conv2d(in_ch, nf, 3, padding=1)
        self.trunk = nn.Sequential(*(RRDB(nf, gc) for _ in range(n_blocks)))
        self.trunk_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_out = nn.Conv2d(nf, out_ch, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(image)
        fea = fea + self.trunk_conv(self.trunk(fea))
        return self.conv_out(F.leaky_relu(self.conv_hr(fea), 0.2))
