"""Timestep embeddings: sinusoidal + MLP (authors' code) or a learned look-up table (paper 4.3)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TIME_EMBEDDINGS


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] timesteps (float or int) -> [N, dim] sin/cos features (improved-diffusion's timestep_embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """t -> [N, 4C], shared by E and D."""

    def __init__(self, channels: int, kind: str = "sinusoidal", num_timesteps: int = 1000):
        super().__init__()
        if kind not in TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding {kind!r}: choose one of {', '.join(TIME_EMBEDDINGS)}")
        self.kind, self.channels = kind, channels
        dim = 4 * channels
        self.table = nn.Embedding(num_timesteps, channels) if kind == "learned" else None
        self.mlp = nn.Sequential(nn.Linear(channels, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.mlp(self.table(t.long()))
        return self.mlp(sinusoidal_embedding(t, self.channels))
