"""Where the neural vocoder loses low voices: its magnitude or its phase? Real test recordings pitch-shifted
by librosa (as in bench/pitch_ceiling.py) go through the model's log-Mel; the vocoder's predicted STFT is
then written back with its own phase, with the recording's true phase, or with the phase of a harmonic
pulse train at an F0 track, and pYIN (the pitch guide's independent judge) hears each.

Rows: the recording; the neural round trip; vocoder magnitude + true phase; true magnitude + vocoder phase;
vocoder magnitude + pulse phase at pYIN's F0 of the recording (an oracle F0); vocoder magnitude + pulse phase
at an F0 read from the vocoder's own magnitude by subharmonic summation (no oracle: usable in a vocoder).
A diagnostic, not a vocoder: nothing here is used by the project's audio path.

    python bench/pitch_phase.py [--clips 48] [--shifts 0,-4]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from guidance.data import load_wave
from guidance.features import fit_length
from guidance.guides.pitch import log_mel_of
from guidance.pipeline import ModelSet
from guidance.pitch_targets import PITCH_MAX_HZ, PITCH_MIN_HZ
from guidance.output_level import OUTPUT_PEAK
from guidance.pitch_tracker import TRACKER_HOP_S, at_tracker_rate, pyin_contour, track
from pitch_ceiling import shifted, test_clips

SHS_HARMONICS = 8  # harmonics summed per F0 candidate (below SHS_TOP_HZ)
SHS_DECAY = 0.84  # weight of harmonic k: decay ** (k - 1) (Hermes, 1988)
SHS_TOP_HZ = 2000.0
CANDIDATES_PER_OCTAVE = 96


class Stft:
    """The vocoder's own STFT and inverse (same window, hop and length)."""

    def __init__(self, models: ModelSet) -> None:
        self.cfg = models.vocoder.config
        self.window = models.vocoder.window
        self.rate = models.spec.sample_rate
        self.length = models.spec.num_samples

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.stft(wave, self.cfg.n_fft, self.cfg.hop_length, window=self.window, center=True, return_complex=True)

    def inverse(self, spectrum: torch.Tensor) -> torch.Tensor:
        wave = torch.istft(spectrum, self.cfg.n_fft, self.cfg.hop_length, window=self.window, center=True)
        return fit_length(wave, self.length)


def pyin_track(wave: torch.Tensor, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """pYIN's F0 (Hz, 0 where unvoiced) and voiced flags on the tracker's 10 ms grid."""
    f0, voiced = pyin_contour(at_tracker_rate(wave, rate))
    return np.nan_to_num(f0), voiced


def shs_track(spectrum: torch.Tensor, stft: Stft) -> tuple[np.ndarray, np.ndarray]:
    """F0 per STFT frame by subharmonic summation on the log magnitude, voiced where the frame is within
    30 dB of the loudest, resampled onto the 10 ms grid."""
    mag = spectrum.abs().numpy()
    bin_hz = stft.rate / stft.cfg.n_fft
    octaves = math.log2(PITCH_MAX_HZ / PITCH_MIN_HZ)
    candidates = PITCH_MIN_HZ * 2 ** (np.arange(int(octaves * CANDIDATES_PER_OCTAVE)) / CANDIDATES_PER_OCTAVE)
    level = np.log1p(mag / (mag.max() + 1e-9) * 1000.0)
    score = np.zeros((len(candidates), mag.shape[1]))
    for k in range(1, SHS_HARMONICS + 1):
        fk = k * candidates
        ok = fk < SHS_TOP_HZ
        pos = fk[ok] / bin_hz
        lo = np.floor(pos).astype(int)
        frac = (pos - lo)[:, None]
        score[ok] += SHS_DECAY ** (k - 1) * ((1 - frac) * level[lo] + frac * level[np.minimum(lo + 1, len(level) - 1)])
    f0 = candidates[score.argmax(0)]
    energy_db = 10 * np.log10((mag**2).sum(0) + 1e-20)
    voiced = energy_db >= energy_db.max() - 30.0
    frame_t = np.arange(mag.shape[1]) * stft.cfg.hop_length / stft.rate
    grid_t = np.arange(int(stft.length / stft.rate / TRACKER_HOP_S) + 1) * TRACKER_HOP_S
    return np.interp(grid_t, frame_t, f0), np.interp(grid_t, frame_t, voiced.astype(float)) > 0.5


def pulse_phase(spectrum: torch.Tensor, f0: np.ndarray, voiced: np.ndarray, stft: Stft) -> torch.Tensor:
    """The spectrum with, in voiced frames, the phase of a band-limited pulse train following `f0`
    (10 ms grid); unvoiced frames keep their own phase."""
    if voiced.sum() < 2:
        return spectrum
    grid_t = np.arange(len(f0)) * TRACKER_HOP_S
    t = np.arange(stft.length) / stft.rate
    f = np.interp(t, grid_t[voiced], f0[voiced])
    sample_voiced = np.interp(t, grid_t, voiced.astype(float)) > 0.5
    phase = 2 * np.pi * np.cumsum(f) / stft.rate
    pulses = sum(np.where(k * f < stft.rate / 2, np.cos(k * phase), 0.0) for k in range(1, int(stft.rate / 2 / f.min()) + 1))
    excitation = stft.forward(torch.from_numpy(pulses).float())[..., : spectrum.shape[-1]]
    hop, half = stft.cfg.hop_length, stft.cfg.n_fft // 2
    frame_voiced = torch.tensor([sample_voiced[max(0, i * hop - half): i * hop + half].mean() > 0.5 for i in range(spectrum.shape[-1])])
    return torch.polar(spectrum.abs(), torch.where(frame_voiced[None, :], excitation.angle(), spectrum.angle()))


def peak_normalized(wave: torch.Tensor) -> torch.Tensor:
    return wave / (wave.abs().max() + 1e-9) * OUTPUT_PEAK


def systems(recording: torch.Tensor, models: ModelSet, stft: Stft) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        predicted = models.vocoder.spectrum(log_mel_of(recording[None], models.spec))[0]
    true = stft.forward(recording)[..., : predicted.shape[-1]]
    return {
        "recording": recording,
        "neural round trip": stft.inverse(predicted),
        "vocoder magnitude + true phase": stft.inverse(torch.polar(predicted.abs(), true.angle())),
        "true magnitude + vocoder phase": stft.inverse(torch.polar(true.abs(), predicted.angle())),
        "vocoder magnitude + pulse phase, pYIN F0 of the recording": stft.inverse(pulse_phase(predicted, *pyin_track(recording, stft.rate), stft)),
        "vocoder magnitude + pulse phase, SHS F0 of that magnitude": stft.inverse(pulse_phase(predicted, *shs_track(predicted, stft), stft)),
    }


ROW_ORDER = (
    "recording", "neural round trip", "vocoder magnitude + true phase", "true magnitude + vocoder phase",
    "vocoder magnitude + pulse phase, pYIN F0 of the recording", "vocoder magnitude + pulse phase, SHS F0 of that magnitude",
)  # the keys of `systems`, in print order


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=48, help="test clips, taken evenly across the split")
    ap.add_argument("--shifts", default="0,-4", help="semitones, comma-separated")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = ModelSet.load(device="cpu", vocoder="neural")
    stft = Stft(models)
    clips = test_clips(args.clips)
    print(f"{len(clips)} test clips; shares of all clips pYIN hears voiced, and voiced within 1 semitone of the shifted recording")
    print("| shift st | way back to audio | voiced | within 1 st |\n|---|---|---|---|")
    for st in (float(s) for s in args.shifts.split(",")):
        voiced: dict[str, int] = {}
        within: dict[str, int] = {}
        for clip in clips:
            recording = fit_length(shifted(load_wave(clip.path, stft.rate), stft.rate, st), stft.length)
            reference = track(peak_normalized(recording), stft.rate).median_hz
            for name, wave in systems(recording, models, stft).items():
                heard = track(peak_normalized(wave), stft.rate).median_hz
                if math.isfinite(heard):
                    voiced[name] = voiced.get(name, 0) + 1
                    if math.isfinite(reference) and abs(12 * math.log2(heard / reference)) <= 1:
                        within[name] = within.get(name, 0) + 1
        for name in ROW_ORDER:
            print(f"| {st:+g} | {name} | {voiced.get(name, 0) / len(clips):.2f} | {within.get(name, 0) / len(clips):.2f} |", flush=True)


if __name__ == "__main__":
    main()
