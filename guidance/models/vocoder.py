"""Neural vocoder: normalized log-Mel -> complex STFT -> waveform (a Vocos-style iSTFT head).

A stack of ConvNeXt blocks over frames predicts, for every frame the log-Mel has, the log magnitude
and the phase of the STFT the features were computed from (same n_fft and hop). An inverse STFT turns
that into audio, so the network never upsamples in time: one 1 s clip is 64 frames of 1-D convolutions,
a few milliseconds on a CPU. Phase is predicted directly (S = exp(m) * (cos p + i sin p)), which is
what Griffin-Lim only estimates iteratively from the magnitude.

Siuzdak, "Vocos: Closing the gap between time-domain and Fourier-based neural vocoders" (2023);
Ai and Ling, "APNet: An All-Frame-Level Neural Vocoder ..." (2023) for the phase losses used in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from guidance.features import FeatureSpec, fit_length
from guidance.finite import require_finite
from guidance.output_level import finish_wave


@dataclass(frozen=True)
class VocoderConfig:
    """Network shape. The STFT it predicts is the feature spec's (`for_spec` copies n_fft, hop, n_mels)."""

    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 256
    num_samples: int = 16128
    channels: int = 128
    blocks: int = 8
    expansion: int = 3
    kernel_size: int = 7
    max_log_magnitude: float = 6.0  # exp(6) ~ 400: far above any magnitude of a peak-normalized clip

    @classmethod
    def for_spec(cls, spec: FeatureSpec, **shape: int) -> "VocoderConfig":
        return cls(n_mels=spec.n_mels, n_fft=spec.n_fft, hop_length=spec.hop_length, num_samples=spec.num_samples, **shape)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over time, LayerNorm, pointwise MLP, layer scale, residual (Liu et al. 2022)."""

    def __init__(self, channels: int, expansion: int, kernel_size: int, layer_scale: float) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pointwise = nn.Sequential(
            nn.Linear(channels, channels * expansion), nn.GELU(), nn.Linear(channels * expansion, channels)
        )
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(x).transpose(1, 2)  # (batch, frames, channels)
        y = self.pointwise(self.norm(y)) * self.gamma
        return x + y.transpose(1, 2)


class NeuralVocoder(nn.Module):
    """Normalized log-Mel (batch, 1, n_mels, frames) -> waveform (batch, num_samples).

    Follows the `guidance.features.Vocoder` protocol once `spec` is set (the model file's loader does
    that). Like Griffin-Lim here, `forward` finishes the wave (`guidance.output_level`: peak 0.9, digital
    silence kept silent); `synthesize` returns the raw waveform for training.
    """

    def __init__(self, config: VocoderConfig = VocoderConfig()) -> None:
        super().__init__()
        self.config = config
        self.spec: FeatureSpec | None = None
        c = config.channels
        self.embed = nn.Conv1d(config.n_mels, c, config.kernel_size, padding=config.kernel_size // 2)
        self.embed_norm = nn.LayerNorm(c, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(c, config.expansion, config.kernel_size, layer_scale=1.0 / config.blocks)
            for _ in range(config.blocks)
        )
        self.out_norm = nn.LayerNorm(c, eps=1e-6)
        self.bins = config.n_fft // 2 + 1
        self.head = nn.Linear(c, 2 * self.bins)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    def spectrum(self, mel: torch.Tensor) -> torch.Tensor:
        """Complex STFT (batch, bins, frames) predicted from the normalized log-Mel."""
        if mel.dim() == 4:
            mel = mel.squeeze(1)
        x = self.embed(mel.float())
        x = self.embed_norm(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        x = self.head(self.out_norm(x.transpose(1, 2))).transpose(1, 2)  # (batch, 2*bins, frames)
        log_mag, phase = x.split(self.bins, dim=1)
        magnitude = torch.exp(log_mag.clamp(max=self.config.max_log_magnitude))
        return torch.polar(magnitude, phase)

    def waveform(self, spectrum: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Inverse STFT of a predicted spectrum, (batch, length or num_samples)."""
        cfg = self.config
        wave = torch.istft(spectrum, n_fft=cfg.n_fft, hop_length=cfg.hop_length, window=self.window, center=True)
        return fit_length(wave, length or cfg.num_samples)

    def synthesize(self, mel: torch.Tensor) -> torch.Tensor:
        """Raw waveform (batch, num_samples) from normalized log-Mels."""
        return self.waveform(self.spectrum(mel))

    @torch.no_grad()
    def forward(self, mel: torch.Tensor, length: int | None = None) -> torch.Tensor:
        require_finite(mel, "the log-Mel given to the vocoder")
        wave = self.waveform(self.spectrum(mel), length)
        return finish_wave(wave, (self.spec or FeatureSpec()).sample_rate)  # no spec yet: the default's rate
