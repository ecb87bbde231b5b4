"""The F0 head: a small conv net that reads the fundamental frequency off a normalized log-Mel.

The harmonic vocoder (`guidance.harmonic_vocoder`) needs an F0 track to give voiced frames the phase of
a pulse train: the neural vocoder's own phase loses low voices (bench/pitch_phase.py: 42% of test clips
shifted 4 semitones down stay voiced through it, 69% with a pulse train's phase at the true F0). The head
classifies each frame into quarter-semitone bins from `fmin_hz`, plus one "unvoiced" class; it is trained
by `speechguide train f0-head` (`guidance.f0_head_training`), with pYIN's contours as labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class F0HeadConfig:
    n_mels: int = 64
    channels: int = 128
    bins: int = 144  # quarter-semitone bins: 50 Hz .. 50 * 2 ** (143 / 48) = 394 Hz
    fmin_hz: float = 50.0
    bins_per_octave: int = 48
    kernel_size: int = 5


class F0Head(nn.Module):
    """Normalized log-Mel (B, M, T) or (B, 1, M, T) -> logits (B, bins + 1, T): the F0 bins, then "unvoiced"."""

    def __init__(self, config: F0HeadConfig = F0HeadConfig()) -> None:
        super().__init__()
        self.config = config
        c, k = config.channels, config.kernel_size
        self.net = nn.Sequential(
            nn.Conv1d(config.n_mels, c, k, padding=k // 2), nn.GELU(),
            nn.Conv1d(c, c, k, padding=k // 2), nn.GELU(),
            nn.Conv1d(c, c, k, padding=k // 2), nn.GELU(),
            nn.Conv1d(c, config.bins + 1, 1),
        )

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        return self.net(mels.squeeze(1) if mels.dim() == 4 else mels)

    def bin_of(self, hz: torch.Tensor) -> torch.Tensor:
        """The nearest bin of each F0 in Hz (clamped to the head's range)."""
        cfg = self.config
        return torch.round(cfg.bins_per_octave * torch.log2(hz / cfg.fmin_hz)).clamp(0, cfg.bins - 1).long()

    def f0(self, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) F0 in Hz, the probability-weighted mean of the 9 bins around the most probable one (so it
        moves smoothly between bins), and (B, T) voiced: where "unvoiced" has less than half the mass."""
        cfg = self.config
        p = self(mels).softmax(1)
        pitch = p[:, : cfg.bins]
        around = torch.arange(-4, 5, device=p.device)[None, :, None]
        idx = (pitch.argmax(1, keepdim=True) + around).clamp(0, cfg.bins - 1)
        w = pitch.gather(1, idx)
        b = (w * idx).sum(1) / w.sum(1).clamp_min(1e-9)
        return cfg.fmin_hz * 2 ** (b / cfg.bins_per_octave), (p[:, cfg.bins] < 0.5).detach()
