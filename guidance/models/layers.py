"""Building blocks shared by the networks: noise embedding and FiLM-conditioned residual blocks."""

from __future__ import annotations

import math

import torch
from torch import nn


class NoiseEmbedding(nn.Module):
    """c_noise (B,) -> (B, dim): sinusoidal features followed by a small MLP."""

    def __init__(self, dim: int, frequencies: int = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), frequencies)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU())

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1) * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class FiLMResBlock(nn.Module):
    """Two 3x3 convolutions with a residual path; the noise embedding scales and shifts the middle."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int | None, norm: str = "group", dropout: float = 0.0) -> None:
        super().__init__()
        make_norm = group_norm if norm == "group" else nn.BatchNorm2d
        self.norm1 = make_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = make_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out) if emb_dim else None
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None and emb is not None:
            scale, shift = self.film(emb).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(nn.functional.silu(h)))
        return h + self.skip(x)
