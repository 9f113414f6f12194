"""Sliding-window prediction for images larger than the network's training size.

The MoNuSeg protocol is the special case tile = stride = 256 on 512 x 512 images (the four quadrants,
G(I) computed per window as the authors did). With stride < tile, overlapping windows are blended
with weights that sum to one at every pixel.
"""

from __future__ import annotations

import torch


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


def stitch(tiles: torch.Tensor, starts: list[tuple[int, int]], h: int, w: int, weight: torch.Tensor) -> torch.Tensor:
    """Blend [n, ..., tile, tile] window outputs into [..., h, w]: sum(w * tile) / sum(w) per pixel."""
    tile = tiles.shape[-1]
    acc = tiles.new_zeros(*tiles.shape[1:-2], h, w)
    norm = tiles.new_zeros(h, w)
    weight = weight.to(tiles)
    for out, (y, x) in zip(tiles, starts):
        acc[..., y : y + tile, x : x + tile] += out * weight
        norm[y : y + tile, x : x + tile] += weight
    return acc / norm
