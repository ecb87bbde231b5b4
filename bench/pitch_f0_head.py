"""Does a harmonic source keep low voices without costing quality? A probe for the vocoder the pitch guide needs.

bench/pitch_phase.py found that the neural vocoder loses low voices in its phase: its own magnitude with
the phase of a pulse train at the recording's F0 (an oracle) keeps them. This probe replaces the oracle by
something a vocoder can have:
1. an F0 head: a small 1-D conv net over the normalized log-Mel frames, 144 quarter-semitone bins from
   50 Hz plus "unvoiced", trained here for a few minutes on training clips pitch-shifted by -5..+3 st
   (librosa), with pYIN's contour of each shifted clip as labels;
2. the harmonic rendering: the neural vocoder's magnitude, and in frames the head calls voiced the phase
   of a band-limited pulse train following the head's F0 (differentiable in the log-Mel), inverse STFT.
It then measures, side by side in one run: (a) on test clips shifted by each --shifts value, the share
pYIN hears voiced and within 1 semitone of the shifted recording, neural round trip against harmonic;
(b) on validation clips, the outside judges (digit ASR, DNSMOS) on the recordings, the neural round
trip and the harmonic one. The labels come from pYIN, which also judges (a): (b) is the check that
nothing was fitted to the judge. A probe, not a vocoder: nothing here is used by the project's audio path.

    python bench/pitch_f0_head.py [--train-clips 1200] [--clips 48] [--shifts 0,-4] [--val-every 3]
"""

from __future__ import annotations

import argparse
import math
import time
from multiprocessing import Pool

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from guidance.data import fsdd_split, list_fsdd, load_wave, load_waves, resolve_fsdd_root
from guidance.features import LogMel, fit_length
from guidance.output_level import finish_wave
from guidance.pipeline import ModelSet
from guidance.pitch_tracker import at_tracker_rate, pyin_contour, track
from guidance.vocoders import vocode_batched
from pitch_ceiling import shifted, test_clips
from pitch_phase import peak_normalized

HEAD_BINS = 144  # quarter-semitone bins from HEAD_FMIN: 50 Hz .. 50 * 2 ** (143 / 48) = 394 Hz
HEAD_FMIN = 50.0
BINS_PER_OCTAVE = 48
TRAIN_SHIFT_ST = (-5.0, 3.0)
TRAIN_STEPS = 3000


class F0Head(nn.Module):
    """Normalized log-Mel (B, M, T) -> logits (B, HEAD_BINS + 1, T): F0 bins, then "unvoiced"."""

    def __init__(self, n_mels: int, channels: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, channels, 5, padding=2), nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2), nn.GELU(),
            nn.Conv1d(channels, channels, 5, padding=2), nn.GELU(),
            nn.Conv1d(channels, HEAD_BINS + 1, 1),
        )

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        return self.net(mels)

    def f0(self, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) F0 in Hz (probability-weighted mean of the 9 bins around the most probable one,
        differentiable) and (B, T) voiced."""
        p = self(mels).softmax(1)
        pitch = p[:, :HEAD_BINS]
        idx = (pitch.argmax(1, keepdim=True) + torch.arange(-4, 5, device=p.device)[None, :, None]).clamp(0, HEAD_BINS - 1)
        w = pitch.gather(1, idx)
        b = (w * idx).sum(1) / w.sum(1).clamp_min(1e-9)
        return HEAD_FMIN * 2 ** (b / BINS_PER_OCTAVE), (p[:, HEAD_BINS] < 0.5).detach()


def _labelled(job: tuple[str, float, int, int]) -> tuple[torch.Tensor, np.ndarray]:
    path, st, rate, samples = job
    wave = fit_length(shifted(load_wave(path, rate), rate, st), samples)
    f0, voiced = pyin_contour(at_tracker_rate(wave, rate))
    return wave, np.where(voiced, np.nan_to_num(f0), 0.0)


def train_head(models: ModelSet, clips: int, seed: int = 0, say=print) -> F0Head:
    spec = models.spec
    train = fsdd_split(list_fsdd(resolve_fsdd_root()), "train")
    rng = np.random.default_rng(seed)
    jobs = [(str(train[i].path), float(rng.uniform(*TRAIN_SHIFT_ST)), spec.sample_rate, spec.num_samples)
            for i in rng.choice(len(train), min(clips, len(train)), replace=False)]
    started = time.perf_counter()
    with Pool(2) as pool:
        data = pool.map(_labelled, jobs, chunksize=16)
    mels = LogMel(spec)(torch.stack([w for w, _ in data]))[:, 0]  # (N, M, T)
    frames = mels.shape[-1]
    # pYIN's 10 ms grid onto the log-Mel's frames (hop / rate apart, both centred).
    grid = np.arange(frames) * spec.hop_length / spec.sample_rate / 0.01
    labels = []
    for _, f0 in data:
        f = f0[np.clip(np.round(grid).astype(int), 0, len(f0) - 1)]
        y = np.full(frames, HEAD_BINS)
        y[f > 0] = np.clip(np.round(BINS_PER_OCTAVE * np.log2(f[f > 0] / HEAD_FMIN)), 0, HEAD_BINS - 1)
        labels.append(y)
    labels = torch.tensor(np.stack(labels))
    say(f"labels: {len(data)} shifted training clips in {time.perf_counter() - started:.0f} s, "
        f"{float((labels < HEAD_BINS).float().mean()):.2f} of frames voiced")
    torch.manual_seed(seed)
    head = F0Head(spec.n_mels)
    opt = torch.optim.AdamW(head.parameters(), 2e-3, weight_decay=1e-4)
    started = time.perf_counter()
    for step in range(TRAIN_STEPS):
        idx = torch.randint(0, len(mels), (32,))
        x = mels[idx] + 0.05 * torch.randn_like(mels[idx])
        loss = F.cross_entropy(head(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    say(f"F0 head: {TRAIN_STEPS} steps in {time.perf_counter() - started:.0f} s, last loss {float(loss.detach()):.3f}")
    return head.eval().requires_grad_(False)


class HarmonicRendering(nn.Module):
    """Normalized log-Mel (B, 1, M, T) -> raw waveform (B, samples): the vocoder's magnitude, with the phase
    of a pulse train at the F0 head's F0 in the frames it calls voiced and the vocoder's phase elsewhere."""

    def __init__(self, models: ModelSet, head: F0Head) -> None:
        super().__init__()
        self.vocoder, self.head = models.vocoder, head
        self.rate, self.samples = models.spec.sample_rate, models.spec.num_samples

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        cfg, window = self.vocoder.config, self.vocoder.window
        spectrum = self.vocoder.spectrum(mels)
        f0, voiced = self.head.f0(mels[:, 0])
        frames = f0.shape[-1]
        pos = torch.arange(self.samples, dtype=torch.float32, device=f0.device) / cfg.hop_length
        i0 = pos.floor().long().clamp(0, frames - 1)
        i1 = (i0 + 1).clamp(max=frames - 1)
        a = pos - pos.floor()
        f = f0[:, i0] * (1 - a) + f0[:, i1] * a  # (B, samples), linear between frame centres
        phase = 2 * math.pi * torch.cumsum(f, -1) / self.rate
        pulses = torch.zeros_like(f)
        for k in range(1, int(self.rate / 2 / HEAD_FMIN) + 1):
            below_nyquist = (k * f.detach() < self.rate / 2).float()
            if not bool(below_nyquist.any()):
                break
            pulses = pulses + below_nyquist * torch.cos(k * phase)
        source = torch.stft(pulses, cfg.n_fft, cfg.hop_length, window=window, center=True, return_complex=True)[..., : spectrum.shape[-1]]
        floor = 1e-3 * source.abs().amax(dim=(1, 2), keepdim=True).detach()  # keeps the unit phasor's gradient finite
        unit = torch.where(voiced[:, None, :], source / torch.sqrt(source.abs() ** 2 + floor**2), spectrum / spectrum.abs().clamp_min(1e-9))
        wave = torch.istft(spectrum.abs() * unit, cfg.n_fft, cfg.hop_length, window=window, center=True)
        return fit_length(wave, self.samples)


def pitch_rows(models: ModelSet, harmonic: HarmonicRendering, clips: list, shifts: list[float], say=print) -> None:
    rate, front = models.spec.sample_rate, LogMel(models.spec)
    say("| shift st | way back to audio | voiced | within 1 st of the shifted recording |\n|---|---|---|---|")
    for st in shifts:
        voiced = {"neural round trip": 0, "harmonic (F0 head)": 0}
        within = dict(voiced)
        for clip in clips:
            recording = fit_length(shifted(load_wave(clip.path, rate), rate, st), models.spec.num_samples)
            reference = track(peak_normalized(recording), rate).median_hz
            mels = front(recording[None])
            with torch.no_grad():
                ways = {"neural round trip": models.vocoder(mels)[0], "harmonic (F0 head)": finish_wave(harmonic(mels), rate)[0]}
            for name, wave in ways.items():
                heard = track(wave, rate).median_hz
                if math.isfinite(heard):
                    voiced[name] += 1
                    within[name] += math.isfinite(reference) and abs(12 * math.log2(heard / reference)) <= 1
        for name in voiced:
            say(f"| {st:+g} | {name} | {voiced[name] / len(clips):.2f} | {within[name] / len(clips):.2f} |")


def judge_rows(models: ModelSet, harmonic: HarmonicRendering, every: int, say=print) -> None:
    from outside_judges.report import judge_waves, summary_row

    clips = fsdd_split(list_fsdd(resolve_fsdd_root()), "val")[::every]
    waves = load_waves(clips, models.spec)
    mels = LogMel(models.spec)(waves)
    rate = models.spec.sample_rate
    with torch.no_grad():
        ways = {
            "recordings": waves,
            "neural round trip": vocode_batched(models.vocoder, mels),
            "harmonic (F0 head)": finish_wave(harmonic(mels), rate),
        }
    say(f"\n{len(clips)} validation clips (1 in {every})\n\n| way back to audio | outside ASR | DNSMOS SIG | BAK | OVRL |\n|---|---|---|---|---|")
    for name, out in ways.items():
        r = summary_row(judge_waves(out, rate, [c.digit for c in clips]))
        say(f"| {name} | {r['asr_accuracy']:.2f} | {r['sig']:.2f} | {r['bak']:.2f} | {r['ovrl']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-clips", type=int, default=1200, help="training clips the F0 head learns from")
    ap.add_argument("--clips", type=int, default=48, help="test clips for the pitch rows, taken evenly across the split")
    ap.add_argument("--shifts", default="0,-4", help="semitones, comma-separated")
    ap.add_argument("--val-every", type=int, default=3, help="every n-th validation clip for the outside judges")
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = ModelSet.load(device="cpu", vocoder="neural")
    harmonic = HarmonicRendering(models, train_head(models, args.train_clips))
    pitch_rows(models, harmonic, test_clips(args.clips), [float(s) for s in args.shifts.split(",")])
    judge_rows(models, harmonic, args.val_every)


if __name__ == "__main__":
    main()
