"""The independent pitch tracker that judges pitch guidance: pYIN (librosa), never CREPE.

pYIN (Mauch and Dixon, 2014) is a signal-processing tracker: the YIN difference function with a
probabilistic threshold and an HMM over pitch and voicing. It shares nothing with the guide's CREPE,
so a sample the guide fooled is not heard as on target. It runs on the written waveform (what a
listener hears), on the frames the guide's energy gate keeps (`guidance.guides.pitch.energy_gate`:
the neural vocoder leaves a faint hum at its frame rate in silence that any tracker calls voiced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from guidance.librosa_kernels import first_use
from guidance.pitch_targets import PITCH_MAX_HZ, PITCH_MIN_HZ, PitchLine

TRACKER_HOP_S = 0.01
TRACKER_FRAME = 1024  # at 16 kHz: 64 ms, two periods of the lowest F0 pYIN searches (50 Hz)
TRACKER_RATE = 16000


@dataclass(frozen=True)
class HeardPitch:
    """What the tracker heard in one clip: median F0 over voiced frames (NaN if none), the voiced share of
    the speech frames, and the F0 slope across the voiced region in semitones (end minus start, a line fit)."""

    median_hz: float
    voiced_fraction: float
    glide_semitones: float

    def error_semitones(self, line: PitchLine) -> float:
        """|median F0 - the target line's median| in semitones (NaN when nothing was voiced)."""
        if not math.isfinite(self.median_hz):
            return float("nan")
        return abs(12.0 * math.log2(self.median_hz / line.median_hz))


def at_tracker_rate(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """One waveform (samples,) as a float CPU tensor at the tracker's rate."""
    wave = wave.detach().float().reshape(-1).cpu()
    if sample_rate != TRACKER_RATE:
        import torchaudio

        wave = torchaudio.functional.resample(wave, sample_rate, TRACKER_RATE)
    return wave


def pyin_contour(wave: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """pYIN's F0 (Hz, NaN where unvoiced) and voiced flags every TRACKER_HOP_S, of a wave at TRACKER_RATE."""
    import librosa

    with first_use("pyin"):
        f0, voiced, _ = librosa.pyin(
            wave.numpy(), fmin=PITCH_MIN_HZ, fmax=PITCH_MAX_HZ, sr=TRACKER_RATE, frame_length=TRACKER_FRAME,
            hop_length=int(TRACKER_HOP_S * TRACKER_RATE), center=True,
        )
    return f0, voiced


def track(wave: torch.Tensor, sample_rate: int) -> HeardPitch:
    """pYIN over one waveform (samples,), restricted to its speech frames."""
    from guidance.guides.pitch import energy_gate, frame_audio

    wave = at_tracker_rate(wave, sample_rate)
    f0, voiced = pyin_contour(wave)
    gate = energy_gate(frame_audio(wave[None], int(TRACKER_HOP_S * TRACKER_RATE)))[0].numpy()
    n = min(len(f0), len(gate))
    f0, voiced, gate = f0[:n], voiced[:n] & gate[:n], gate[:n]
    speech = max(int(gate.sum()), 1)
    if not voiced.any():
        return HeardPitch(float("nan"), 0.0, float("nan"))
    semis = 12.0 * np.log2(f0[voiced] / 100.0)
    t = np.flatnonzero(voiced).astype(float)
    slope = float(np.polyfit(t, semis, 1)[0] * (t[-1] - t[0])) if len(t) >= 3 and t[-1] > t[0] else 0.0
    return HeardPitch(float(np.median(f0[voiced])), float(voiced.sum() / speech), slope)
