"""A small U-Net over log-Mel images, the baseline denoiser's backbone F(c_in x, c_noise)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from guidance.models.layers import FiLMResBlock, NoiseEmbedding


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...] = (16, 32, 64, 96)
    blocks_per_level: int = 1
    emb_dim: int = 128
    dropout: float = 0.0


class UNet(nn.Module):
    """Encoder/decoder with skip connections; every block is FiLM-conditioned on the noise level."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        ch = list(config.channels)
        self.embed = NoiseEmbedding(config.emb_dim)
        self.stem = nn.Conv2d(1, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = ch[0]
        skips = []
        for level, c_out in enumerate(ch):
            for _ in range(config.blocks_per_level):
                self.down.append(FiLMResBlock(c, c_out, config.emb_dim, dropout=config.dropout))
                c = c_out
                skips.append(c)
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if level < len(ch) - 1 else nn.Identity())
        self.mid = nn.ModuleList([FiLMResBlock(c, c, config.emb_dim), FiLMResBlock(c, c, config.emb_dim)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, c_out in reversed(list(enumerate(ch))):
            for _ in range(config.blocks_per_level):
                self.up.append(FiLMResBlock(c + skips.pop(), c_out, config.emb_dim, dropout=config.dropout))
                c = c_out
            self.upsample.append(nn.Upsample(scale_factor=2, mode="nearest") if level > 0 else nn.Identity())
        self.out = nn.Sequential(nn.GroupNorm(math.gcd(8, c), c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.embed(c_noise)
        h = self.stem(x)
        hs = []
        k = 0
        for down in self.downsample:
            for _ in range(self.config.blocks_per_level):
                h = self.down[k](h, emb)
                hs.append(h)
                k += 1
            h = down(h)
        for block in self.mid:
            h = block(h, emb)
        k = 0
        for up in self.upsample:
            for _ in range(self.config.blocks_per_level):
                h = self.up[k](torch.cat([h, hs.pop()], dim=1), emb)
                k += 1
            h = up(h)
        return self.out(h)
