"""Sliding-window prediction for images larger than the network's training size.

The MoNuSeg protocol is the special case tile = stride = 256 on 512 x 512 images (the four quadrants,
G(I) computed per window as the authors did). With stride < tile, overlapping windows are blended
with weights that sum to one at every pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def padded(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple` (the network stride; the tile for an image smaller
    than one window). The one home of this rounding: the network inputs, the progress count and the memory
    estimate all read their sizes from Predictor.network_inputs, which calls this."""
    return -(-length // multiple) * multiple


def pad_to_stride(image: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad [B, C, H, W] at the bottom and right to multiples of stride; returns the original (H, W)."""
    h, w = image.shape[-2:]
    ph, pw = padded(h, stride) - h, padded(w, stride) - w
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        image = F.pad(image, (0, pw, 0, ph), mode=mode)
    return image, (h, w)


def windows_per_call(generations: int, batch_generations: int) -> int:
    """Windows whose generations share one network batch: about batch_generations / generations, at least 1."""
    return max(1, batch_generations // max(1, generations))


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, length) with windows of `tile`; the last window ends at `length`."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def windows(h: int, w: int, tile: int, stride: int) -> list[tuple[int, int]]:
    return [(y, x) for y in window_starts(h, tile, stride) for x in window_starts(w, tile, stride)]


def blend_weight(tile: int, kind: str = "uniform") -> torch.Tensor:
    """Per-pixel weight of a window [tile, tile]: "uniform", or "gaussian" (sigma = tile / 4; lower at
    the borders, where a window sees less context)."""
    if kind == "uniform":
        return torch.ones(tile, tile)
    if kind == "gaussian":
        r = torch.arange(tile, dtype=torch.float32) - (tile - 1) / 2
        g = torch.exp(-(r**2) / (2 * (tile / 4) ** 2))
        return (g[:, None] * g[None, :]).clamp(min=1e-3)
    raise ValueError(f"blend must be 'uniform' or 'gaussian', got {kind!r}")


class Stitcher:
    """Accumulates window outputs into a [..., h, w] map: sum(w * tile) / sum(w) per pixel.

    Windows can be added in any number of groups, so a large image never holds every window's
    generations at once (only the stitched [G, h, w] maps).
    """

    def __init__(self, h: int, w: int, weight: torch.Tensor):
        self.h, self.w, self.weight = h, w, weight
        self.acc: torch.Tensor | None = None
        self.norm: torch.Tensor | None = None

    def add(self, tiles: torch.Tensor, starts: list[tuple[int, int]]) -> None:
        """tiles [n, ..., tile, tile] at the top-left corners `starts`."""
        tile = tiles.shape[-1]
        if self.acc is None:
            self.acc = tiles.new_zeros(*tiles.shape[1:-2], self.h, self.w)
            self.norm = tiles.new_zeros(self.h, self.w)
        weight = self.weight.to(tiles)
        for out, (y, x) in zip(tiles, starts):
            self.acc[..., y : y + tile, x : x + tile] += out * weight
            self.norm[y : y + tile, x : x + tile] += weight

    def result(self) -> torch.Tensor:
        return self.acc / self.norm
