"""Judges: classifiers of another architecture (a 1-D time-delay network over Mel channels with
statistics pooling, x-vector style), trained with another seed, used only to *measure* audio.

Their penultimate embedding is the feature space for Frechet distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class JudgeConfig:
    num_classes: int = 10
    n_mels: int = 64
    channels: int = 128
    embed_dim: int = 128
    dropout: float = 0.2


class TDNNJudge(nn.Module):
    def __init__(self, config: JudgeConfig = JudgeConfig()) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        layers = []
        c_in = config.n_mels
        for kernel, dilation in ((5, 1), (3, 2), (3, 3), (1, 1)):
            layers += [nn.Conv1d(c_in, c, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2), nn.ReLU(), nn.BatchNorm1d(c)]
            c_in = c
        self.frames = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(2 * c, config.embed_dim), nn.ReLU(), nn.BatchNorm1d(config.embed_dim))
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.embed_dim, config.num_classes))

    @property
    def num_features(self) -> int:
        return self.config.embed_dim

    def embedding(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.frames(mel.squeeze(1))
        stats = torch.cat([h.mean(dim=-1), h.std(dim=-1)], dim=1)
        return self.embed(stats)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(mel))
