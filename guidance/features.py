"""Waveform <-> normalized log-Mel, and the vocoder back to audio.

Every model in the project reads and writes the same tensor: a normalized log-Mel image
shaped (batch, 1, n_mels, frames). `FeatureSpec` describes that front end completely and is
stored inside every model file, so that no model is ever fed features of another shape.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Protocol

import torch
import torchaudio

from guidance.finite import require_finite
from guidance.output_level import finish_wave


class FeatureSpecMismatch(ValueError):
    """A model file was made with a different front end than the one it is used with."""


@dataclass(frozen=True)
class FeatureSpec:
    """The exact front end a model was trained on.

    `mean` and `std` normalize log-Mel values to roughly unit scale; they are measured on the
    training split (see `guidance.data.fit_normalization`).
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    frames: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0
    log_floor: float = 1e-5
    mean: float = 0.0
    std: float = 1.0

    @property
    def num_samples(self) -> int:
        """Clip length in samples that yields exactly `frames` centred STFT frames."""
        return self.hop_length * (self.frames - 1)

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FeatureSpec fields: {sorted(unknown)}")
        return cls(**data)

    def check_compatible(self, other: "FeatureSpec", what: str = "model") -> None:
        """Raise `FeatureSpecMismatch` naming every field where `other` differs from self."""
        diffs = []
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            same = abs(a - b) <= 1e-6 * max(1.0, abs(a)) if isinstance(a, float) else a == b
            if not same:
                diffs.append(f"{f.name}: expected {a}, {what} has {b}")
        if diffs:
            raise FeatureSpecMismatch(
                f"{what} was made with a different feature config ({'; '.join(diffs)})"
            )


class LogMel(torch.nn.Module):
    """Waveform (batch, samples) at `spec.sample_rate` -> normalized log-Mel (batch, 1, mels, frames)."""

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=spec.sample_rate,
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            n_mels=spec.n_mels,
            f_min=spec.f_min,
            f_max=spec.f_max,
            power=2.0,
            center=True,
        )

    def unnormalized(self, wave: torch.Tensor) -> torch.Tensor:
        wave = fit_length(wave, self.spec.num_samples)
        mel = self.mel(wave)
        return torch.log(mel.clamp_min(self.spec.log_floor)).unsqueeze(1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return (self.unnormalized(wave) - self.spec.mean) / self.spec.std

    def any_length(self, wave: torch.Tensor) -> torch.Tensor:
        """Normalized log-Mel of a waveform of any length: no centre-crop or padding to `spec.frames`
        (vocoder training crops, and resynthesis of whole recordings)."""
        mel = torch.log(self.mel(wave).clamp_min(self.spec.log_floor)).unsqueeze(1)
        return (mel - self.spec.mean) / self.spec.std


def fit_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Centre-crop or zero-pad the last dimension to `num_samples`."""
    n = wave.shape[-1]
    if n > num_samples:
        start = (n - num_samples) // 2
        return wave[..., start : start + num_samples]
    if n < num_samples:
        left = (num_samples - n) // 2
        return torch.nn.functional.pad(wave, (left, num_samples - n - left))
    return wave


class Vocoder(Protocol):
    """Anything that turns normalized log-Mels back into waveforms (batch, samples)."""

    spec: FeatureSpec

    def __call__(self, mel: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Waveforms of `length` samples (default `spec.num_samples`), peak-normalized to 0.9."""
        ...


class GriffinLimVocoder(torch.nn.Module):
    """Normalized log-Mel -> waveform by least-squares inverse Mel and Griffin-Lim phase recovery.

    Phase initialisation is seeded so that the same spectrogram always gives the same audio. A
    non-finite log-Mel is refused (NonFiniteError): the inverse Mel's least-squares solve reaches
    LAPACK, which fails on NaN with an internal assertion or garbage rather than a clear error.
    """

    def __init__(self, spec: FeatureSpec, n_iter: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.seed = seed
        n_stft = spec.n_fft // 2 + 1
        self.inverse_mel = torchaudio.transforms.InverseMelScale(
            n_stft=n_stft,
            n_mels=spec.n_mels,
            sample_rate=spec.sample_rate,
            f_min=spec.f_min,
            f_max=spec.f_max,
        )
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=spec.n_fft, hop_length=spec.hop_length, power=1.0, n_iter=n_iter, rand_init=True
        )

    @torch.no_grad()
    def forward(self, mel: torch.Tensor, length: int | None = None) -> torch.Tensor:
        require_finite(mel, "the log-Mel given to the vocoder")
        if mel.dim() == 4:
            mel = mel.squeeze(1)
        power = torch.exp(mel.float() * self.spec.std + self.spec.mean)
        magnitude = self.inverse_mel(power).clamp_min(0.0).sqrt()
        devices = [magnitude.device] if magnitude.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            wave = self.griffin_lim(magnitude)
        wave = fit_length(wave, length or self.spec.num_samples)
        return finish_wave(wave, self.spec.sample_rate)
