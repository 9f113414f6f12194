"""eps_theta(x_t, I, t) = D(E(F(x_t) + G(I), t), t) (paper eq. 17, Fig. 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import Attention, Downsample, ResBlock, TimestepSequential, Upsample, group_norm, zero_module
from .embeddings import TimeEmbedding
from .fusion import Injector, add_per_image, build_encoder, combine, e_in_channels, f_in_channels


@dataclass(frozen=True)
class Level:
    """One feature map of the U-Net: at 1/ds of the input resolution, with `channels` channels, followed
    by self-attention or not."""

    ds: int
    channels: int
    attention: bool


@dataclass(frozen=True)
class Layout:
    """The U-Net's shape for a ModelConfig, derived once (`layout`) for the network and for the memory
    estimate (segdiff.memory): `skips`, every encoder output the decoder keeps (F + G first, then each
    ResBlock (+ attention) and Downsample in order); `middle`, the bottleneck (always with attention);
    `attention`, every attention layer's level (encoder, middle, decoder)."""

    skips: tuple[Level, ...]
    middle: Level
    attention: tuple[Level, ...]


def layout(cfg: ModelConfig) -> Layout:
    """The level layout of the SegDiffUNet that `cfg` builds (no weights needed)."""
    C = cfg.model_channels
    # the first skip is E's input: F(x_t) + G(I), or [F(x_t), G(I)] for the concat variant (model/fusion.py)
    skips, ds, ch = [Level(1, e_in_channels(cfg), False)], 1, C
    decoder_attention = []
    for level, mult in enumerate(cfg.channel_mult):
        ch = mult * C
        for _ in range(cfg.num_res_blocks):
            skips.append(Level(ds, ch, ds in cfg.attention_ds))
        decoder_attention += [Level(ds, ch, True)] * (cfg.num_res_blocks + 1) if ds in cfg.attention_ds else []
        if level != len(cfg.channel_mult) - 1:
            skips.append(Level(ds * 2, ch, False))  # Downsample
            ds *= 2
    middle = Level(ds, ch, True)
    attention = tuple(s for s in skips if s.attention) + (middle,) + tuple(decoder_attention)
    return Layout(tuple(skips), middle, attention)


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
        # how x_t and I meet: the method or an ablation variant (model/fusion.py, cfg.conditioning)
        self.F = nn.Conv2d(f_in_channels(cfg), C, 3, padding=1)
        self.G = build_encoder(cfg)  # None for the no-encoder variant
        # variants four to six: G(I) joins after E's inject_after-th downsampling block (index in self.encoder)
        self.inject = Injector(cfg) if cfg.conditioning == "inject" else None

        self.layout = layout(cfg)
        self.encoder = nn.ModuleList()  # E, after F + G, which is the first skip
        ch = e_in_channels(cfg)
        for prev, lv in zip(self.layout.skips, self.layout.skips[1:]):
            if lv.ds != prev.ds:
                self.encoder.append(TimestepSequential([Downsample(ch)]))
                continue
            layers: list[nn.Module] = [ResBlock(ch, emb_dim, lv.channels, cfg.dropout, groups)]
            ch = lv.channels
            if lv.attention:
                layers.append(Attention(ch, cfg.num_heads, groups))
            self.encoder.append(TimestepSequential(layers))
        skip_chs, ds = [lv.channels for lv in self.layout.skips], self.layout.middle.ds
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
        downs = [i for i, block in enumerate(self.encoder) if isinstance(block[0], Downsample)]
        self.inject_index = downs[cfg.inject_after - 1] if self.inject is not None else None

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """G(I): [B, image_channels, H, W] normalised image -> cond [B, C, H, W] (what depends on the image
        alone, per variant: model/fusion.py)."""
        cond = image if self.G is None else self.G(image)
        return cond if self.inject is None else self.inject(cond)

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
        if self.cfg.self_condition:  # the previous x0 estimate enters F beside x_t (zeros when there is none)
            x_t = torch.cat([x_t, torch.zeros_like(x_t) if x0_prev is None else x0_prev.to(x_t.dtype)], dim=1)
        elif x0_prev is not None:
            raise ValueError("x0_prev given to a network without model.self_condition")
        h0 = combine(self.cfg, self.F, x_t, cond)  # generations of the same image share one cond row
        hs = [h0]
        h = h0
        for i, block in enumerate(self.encoder):
            h = block(h, emb)
            if i == self.inject_index:
                h = add_per_image(h, cond)
            hs.append(h)
        h = self.middle(h, emb)
        for block in self.decoder:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
