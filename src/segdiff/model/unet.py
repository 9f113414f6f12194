"""eps_theta(x_t, I, t) = D(E(F(x_t) + G(I), t), t) (paper eq. 17, Fig. 1)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import Attention, Downsample, ResBlock, TimestepSequential, Upsample, group_norm, zero_module
from .embeddings import TimeEmbedding
from .rrdb import RRDBEncoder


class SegDiffUNet(nn.Module):
    """The SegDiff noise predictor.

    `encode_image(I)` computes G(I) once per image; `forward(x_t, t, cond)` runs F, E and D and may be
    called for every step and every generation with the same `cond`. x_t has M = cfg.mask_channels
    channels: 1 for the paper's binary mask, K one-hot class channels for K classes. When x_t holds G
    generations per image ([B*G, M, H, W]) and cond holds one entry per image ([B, C, H, W]), cond is broadcast without
    a copy.
    """

    def __init__(self, cfg: ModelConfig, num_timesteps: int = 100):
        super().__init__()
        self.cfg = cfg
        C, groups = cfg.model_channels, cfg.norm_groups
        emb_dim = 4 * C
        self.time_embed = TimeEmbedding(C, cfg.time_embedding, num_timesteps)
        # self-conditioning: the previous x0 estimate enters F beside x_t (M more channels)
        self.F = nn.Conv2d(cfg.mask_channels * (2 if cfg.self_condition else 1), C, 3, padding=1)
        self.G = RRDBEncoder(cfg.image_channels, C, cfg.rrdb_blocks, cfg.rrdb_nf, cfg.rrdb_gc)

        self.encoder = nn.ModuleList()  # E, after F + G, which is the first skip
        skip_chs, ch, ds = [C], C, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * C, cfg.dropout, groups)]
                ch = mult * C
                if ds in cfg.attention_ds:
                    layers.append(Attention(ch, cfg.num_heads, groups))
                self.encoder.append(TimestepSequential(layers))
                skip_chs.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.encoder.append(TimestepSequential([Downsample(ch)]))
                skip_chs.append(ch)
                ds *= 2
        self.middle = TimestepSequential(
            [
                ResBlock(ch, emb_dim, ch, cfg.dropout, groups),
                Attention(ch, cfg.num_heads, groups),
                ResBlock(ch, emb_dim, ch, cfg.dropout, groups),
            ]
        )
        self.decoder = nn.ModuleList()  # D
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chs.pop(), emb_dim, mult * C, cfg.dropout, groups)]
                ch = mult * C
                if ds in cfg.attention_ds:
                    layers.append(Attention(ch, cfg.num_heads, groups))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.decoder.append(TimestepSequential(layers))
        self.out = nn.Sequential(
            group_norm(ch, groups), nn.SiLU(), zero_module(nn.Conv2d(ch, cfg.mask_channels, 3, padding=1))
        )

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """G(I): [B, image_channels, H, W] normalised image -> cond [B, C, H, W]."""
        return self.G(image)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, x0_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[N, M, H, W] x_t, [N] timesteps (original 0..T-1), cond [N or B, C, H, W] -> eps [N, M, H, W].
        x0_prev [N, M, H, W]: the previous x0 estimate of a self-conditioned network (None = zeros)."""
        n, _, h, w = x_t.shape
        s = self.cfg.stride
        if h % s or w % s:
            raise ValueError(f"input {h}x{w} is not a multiple of the network stride {s}; pad it first")
        emb = self.time_embed(t)
        if self.cfg.self_condition:
            x_t = torch.cat([x_t, torch.zeros_like(x_t) if x0_prev is None else x0_prev.to(x_t.dtype)], dim=1)
        elif x0_prev is not None:
            raise ValueError("x0_prev given to a network without model.self_condition")
        fx = self.F(x_t)
        if cond.shape[0] != n:  # generations of the same image share one G(I)
            b = cond.shape[0]
            h0 = (fx.view(b, n // b, *fx.shape[1:]) + cond.to(fx.dtype)[:, None]).view_as(fx)
        else:
            h0 = fx + cond.to(fx.dtype)
        hs = [h0]
        h = h0
        for block in self.encoder:
            h = block(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        for block in self.decoder:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
