"""Waveforms in, one shape out: mono float32 at 16 kHz, from tensors, arrays or WAV files.

Both judges run at 16 kHz (pocketsphinx's en-us model and DNSMOS were trained there); every
entry point funnels its input through here so that rates and channel layouts are handled once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import soundfile
import torch
import torchaudio

JUDGE_RATE = 16000

WaveLike = Union[torch.Tensor, np.ndarray]
AudioInput = Union[WaveLike, str, os.PathLike]


def read_wav(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """A WAV file as a mono float32 tensor (channels averaged) and its sample rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    data, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.mean(axis=1))), int(sr)


def to_judge_rate(audio: AudioInput, sample_rate: int | None = None) -> torch.Tensor:
    """Mono float32 (samples,) at 16 kHz from a path, or a 1-D wave with its `sample_rate`."""
    if isinstance(audio, (str, os.PathLike)):
        wave, sr = read_wav(audio)
    else:
        if sample_rate is None:
            raise ValueError("a waveform needs its sample_rate (a WAV path carries its own)")
        wave = torch.as_tensor(audio).detach().to("cpu", torch.float32)
        if wave.dim() == 2 and 1 in wave.shape:
            wave = wave.reshape(-1)
        if wave.dim() != 1:
            raise ValueError(f"expected one mono waveform (samples,), got shape {tuple(wave.shape)}")
        sr = int(sample_rate)
    if sr <= 0:
        raise ValueError(f"sample_rate must be positive, got {sr}")
    if sr != JUDGE_RATE:
        wave = torchaudio.functional.resample(wave, sr, JUDGE_RATE)
    if not torch.isfinite(wave).all():
        raise ValueError("waveform contains NaN or infinite samples")
    return wave.contiguous()


def peak_normalize(wave: torch.Tensor, peak: float = 0.9) -> torch.Tensor:
    """Scale to a fixed peak so that judges see every clip at the same level (silence stays silence)."""
    top = wave.abs().max()
    if top <= 1e-8:
        return torch.zeros_like(wave)
    return wave / top * peak
