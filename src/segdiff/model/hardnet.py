"""G for the ablation's variant two (paper section 5): an FC-HarDNet-70 image encoder in place of the RRDBs.

FC-HarDNet (Chao et al., "HarDNet: A Low Memory Traffic Network", ICCV 2019) is an encoder-decoder
segmentation network built of harmonic dense blocks: layer k of a block reads the outputs of layers
k - 2^n for every 2^n dividing k, and its width grows by `grmul` for each such link. This is the "70"
configuration of the authors' FC-HarDNet code (stem 16, 24, 32, 48 with two stride-2 convs; blocks of
4, 4, 8, 8, 8 layers with growth 10, 16, 18, 24, 32 and 1x1 transitions to 64, 96, 160, 224, 320 channels,
average pooling between them; a decoder of bilinear upsampling, skip concatenation, 1x1 conv halving the
channels and a harmonic block per level), written here from the paper's description, with two changes
for its use as G: the final 1x1 conv outputs the U-Net's C channels instead of class logits (upsampled to
the input size, as FC-HarDNet does), and GroupNorm replaces BatchNorm, so that G(I) does not depend on
the batch (one image at prediction; the U-Net uses GroupNorm too) and no running statistics need to
follow the EMA (GroupNorm has the same affine parameters). Parameters: 4,118,326 plus 49 * C for the output
conv (C = 128: 4,124,598; C = 32: 4,119,894), about the 4.1 M of FC-HarDNet-70; `hardnet_parameters()`
counts them (RRDB G of the Vaihingen preset, 6 blocks: see docs/ablation.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import group_norm

FIRST_CH = (16, 24, 32, 48)
CH_LIST = (64, 96, 160, 224, 320)
GROWTH = (10, 16, 18, 24, 32)
N_LAYERS = (4, 4, 8, 8, 8)
GRMUL = 1.7
NORM_GROUPS = 8  # at most; group_norm picks a divisor of the layer's width


class ConvLayer(nn.Sequential):
    """Conv (no bias), GroupNorm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
            group_norm(out_ch, NORM_GROUPS),
            nn.ReLU(inplace=True),
        )


def harmonic_link(layer: int, base_ch: int, growth: int, grmul: float) -> tuple[int, int, list[int]]:
    """Layer `layer` (1-based; 0 is the block's input) of a harmonic dense block -> (its output channels,
    its input channels, the layers it reads)."""
    if layer == 0:
        return base_ch, 0, []
    out_ch, link = float(growth), []
    for i in range(10):
        dv = 2**i
        if layer % dv == 0:
            link.append(layer - dv)
            if i > 0:
                out_ch *= grmul
    out_ch = int(int(out_ch + 1) / 2) * 2  # even widths, as the authors' code rounds them
    in_ch = sum(harmonic_link(k, base_ch, growth, grmul)[0] for k in link)
    return out_ch, in_ch, link


class HarDBlock(nn.Module):
    """A harmonic dense block; its output concatenates the odd layers and the last one."""

    def __init__(self, in_ch: int, growth: int, grmul: float, n_layers: int):
        super().__init__()
        self.links: list[list[int]] = []
        self.layers = nn.ModuleList()
        self.out_channels = 0
        for i in range(n_layers):
            out_ch, layer_in, link = harmonic_link(i + 1, in_ch, growth, grmul)
            self.links.append(link)
            self.layers.append(ConvLayer(layer_in, out_ch))
            if i % 2 == 0 or i == n_layers - 1:
                self.out_channels += out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for link, layer in zip(self.links, self.layers):
            inputs = [outs[k] for k in link]
            outs.append(layer(torch.cat(inputs, 1) if len(inputs) > 1 else inputs[0]))
        t = len(outs)
        return torch.cat([o for i, o in enumerate(outs) if i == t - 1 or i % 2 == 1], 1)


class HarDNetEncoder(nn.Module):
    """G(I) of variant two: [N, in_ch, H, W] -> [N, out_ch, H, W] (any H, W: pooling rounds up and the
    decoder upsamples to each skip's size, then to the input size)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        f = FIRST_CH
        self.stem = nn.Sequential(
            ConvLayer(in_ch, f[0], stride=2),
            ConvLayer(f[0], f[1]),
            ConvLayer(f[1], f[2], stride=2),
            ConvLayer(f[2], f[3]),
        )
        self.down = nn.ModuleList()  # (harmonic block, 1x1 transition) per level
        skip_chs, ch = [], f[3]
        for i, n in enumerate(N_LAYERS):
            blk = HarDBlock(ch, GROWTH[i], GRMUL, n)
            skip_chs.append(blk.out_channels)
            self.down.append(nn.ModuleList([blk, ConvLayer(blk.out_channels, CH_LIST[i], kernel=1)]))
            ch = CH_LIST[i]
        self.up = nn.ModuleList()  # (1x1 conv halving [upsampled, skip], harmonic block) per level
        for i in range(len(N_LAYERS) - 2, -1, -1):
            cat_ch = ch + skip_chs[i]
            blk = HarDBlock(cat_ch // 2, GROWTH[i], GRMUL, N_LAYERS[i])
            self.up.append(nn.ModuleList([ConvLayer(cat_ch, cat_ch // 2, kernel=1), blk]))
            ch = blk.out_channels
        self.final = nn.Conv2d(ch, out_ch, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stem(image)
        skips = []
        for i, (blk, trans) in enumerate(self.down):
            x = blk(x)
            if i < len(self.down) - 1:
                skips.append(x)  # the block's output before its transition, as in FC-HarDNet
                x = F.avg_pool2d(trans(x), 2, ceil_mode=True)
            else:
                x = trans(x)
        for squeeze, blk in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = blk(squeeze(torch.cat([x, skip], 1)))
        x = self.final(x)
        return F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=True)


def hardnet_parameters(in_ch: int = 3, out_ch: int = 128) -> int:
    """The number of parameters of `HarDNetEncoder(in_ch, out_ch)` (the figure the docs quote)."""
    return sum(p.numel() for p in HarDNetEncoder(in_ch, out_ch).parameters())
