"""Differentiable front-end adapters: the project's normalized log-Mel -> another model's input features.

A pretrained model hears its own front end. To guide with it we need a differentiable map from the
tensor the diffusion model works in (normalized log-Mel, `FeatureSpec`: 16 kHz, n_fft 1024, hop 256,
HTK Mel filters without norm) to what that model reads. `LogMelToEncoderMel` targets resemblyzer's
speaker encoder (`resemblyzer.audio.wav_to_mel_spectrogram`: librosa power Mel, 16 kHz, 25 ms Hann
window, 10 ms hop, 40 Slaney-normalised Slaney-scale filters, no log):

normalized log-Mel -> un-normalize -> Mel power -> linear power spectrum (pseudo-inverse of the Mel
filterbank, clamped at 0) -> frequency bins of a 400-point FFT (linear interpolation, rescaled by the
windows' energy ratio) -> 40 Slaney Mel bands -> frames every 10 ms (linear interpolation in time).

FSDD is 8 kHz audio: bands above 4 kHz are (near) empty on both paths. `reference_mel` computes the
encoder's own features from a waveform with torchaudio, matching librosa's, so nothing here imports
resemblyzer or librosa.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio

from guidance.features import FeatureSpec, LogMel


@dataclass(frozen=True)
class EncoderFrontEnd:
    """resemblyzer's hparams: what its speaker encoder hears."""

    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_mels: int = 40
    target_dbfs: float = -30.0  # preprocess_wav's volume normalisation (increase only)

    def frames_for(self, num_samples: int) -> int:
        """Frames of a centred STFT (librosa's and torch's) over `num_samples`."""
        return 1 + num_samples // self.hop_length


def encoder_filterbank(front: EncoderFrontEnd = EncoderFrontEnd()) -> torch.Tensor:
    """(n_fft//2+1, n_mels) Slaney-scale, Slaney-normalised filters: librosa.filters.mel's defaults."""
    return torchaudio.functional.melscale_fbanks(
        front.n_fft // 2 + 1, 0.0, front.sample_rate / 2, front.n_mels, front.sample_rate, norm="slaney", mel_scale="slaney"
    )


def reference_mel(wave: torch.Tensor, front: EncoderFrontEnd = EncoderFrontEnd(), normalize_volume: bool = True) -> torch.Tensor:
    """Waveform (B, samples) at 16 kHz -> the encoder's input (B, frames, n_mels), as resemblyzer computes it.

    Same as `wav_to_mel_spectrogram` (librosa: centred frames, zero padding, periodic Hann, power 2),
    after `normalize_volume(wav, -30 dBFS, increase_only=True)` when `normalize_volume` is set.
    The silence trimming of `preprocess_wav` (webrtcvad) is left out: FSDD clips are one word.
    """
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if normalize_volume:
        wave = volume_normalized(wave, front.target_dbfs)
    window = torch.hann_window(front.n_fft, device=wave.device, dtype=wave.dtype)
    padded = torch.nn.functional.pad(wave.unsqueeze(1), (front.n_fft // 2, front.n_fft // 2)).squeeze(1)
    spec = torch.stft(padded, front.n_fft, front.hop_length, window=window, center=False, return_complex=True)
    power = spec.abs() ** 2  # (B, F, T)
    fb = encoder_filterbank(front).to(wave.device, wave.dtype)
    return torch.einsum("bft,fm->btm", power, fb)


def volume_normalized(wave: torch.Tensor, target_dbfs: float) -> torch.Tensor:
    """resemblyzer's normalize_volume with increase_only=True, per row."""
    int16_max = 2**15 - 1
    rms = ((wave * int16_max) ** 2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-8)
    change_db = target_dbfs - 20 * torch.log10(rms / int16_max)
    gain = torch.where(change_db > 0, 10 ** (change_db / 20), torch.ones_like(change_db))
    return wave * gain


def _interpolation_matrix(src_positions: torch.Tensor, n_src: int) -> torch.Tensor:
    """(len(src_positions), n_src) weights of linear interpolation at fractional source indices."""
    pos = src_positions.clamp(0, n_src - 1)
    lo = pos.floor().long().clamp(max=n_src - 1)
    hi = (lo + 1).clamp(max=n_src - 1)
    frac = pos - lo.to(pos.dtype)
    m = torch.zeros(len(pos), n_src, dtype=torch.float64)
    rows = torch.arange(len(pos))
    m[rows, lo] += 1 - frac
    m[rows, hi] += frac
    return m


class LogMelToEncoderMel(torch.nn.Module):
    """Normalized log-Mel (B, 1, M, T) -> the speaker encoder's Mel power frames (B, T', 40), differentiable.

    Every step is linear in the Mel power except the clamp at 0 after the pseudo-inverse, so gradients
    reach every input bin that carries energy. `max_log` bounds exp() for wild early x0 estimates.
    """

    def __init__(self, spec: FeatureSpec, front: EncoderFrontEnd = EncoderFrontEnd(), max_log: float = 20.0) -> None:
        super().__init__()
        if spec.sample_rate != front.sample_rate:
            raise ValueError(f"adapter expects {front.sample_rate} Hz features, the feature spec has {spec.sample_rate}")
        self.spec, self.front, self.max_log = spec, front, max_log
        src_fb = LogMel(spec).mel.mel_scale.fb.double()  # (F_src, M): the exact filters of the project's front end
        n_src = spec.n_fft // 2 + 1
        n_dst = front.n_fft // 2 + 1
        # Mel power -> linear power per source bin (least squares, minimum norm)
        self.register_buffer("pinv", torch.linalg.pinv(src_fb.T).float())  # (F_src, M)
        # source bins -> destination bins by frequency, times the windows' energy ratio (sum w^2 scales
        # every bin's power, for noise and for a resolved harmonic summed over a band alike)
        dst_hz = torch.arange(n_dst, dtype=torch.float64) * front.sample_rate / front.n_fft
        freq = _interpolation_matrix(dst_hz * spec.n_fft / spec.sample_rate, n_src)
        energy = torch.hann_window(front.n_fft, dtype=torch.float64).pow(2).sum() / torch.hann_window(spec.n_fft, dtype=torch.float64).pow(2).sum()
        to_mel = encoder_filterbank(front).double().T @ (freq * energy)  # (40, F_src)
        self.register_buffer("to_mel", to_mel.float())
        # frames every hop_length samples -> frames every 10 ms (both centred STFTs)
        n_out = front.frames_for(spec.num_samples)
        t_src = torch.arange(n_out, dtype=torch.float64) * front.hop_length / spec.hop_length
        self.register_buffer("time", _interpolation_matrix(t_src, spec.frames).float())  # (T', T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_mel = (x.squeeze(1) * self.spec.std + self.spec.mean).clamp(max=self.max_log)  # (B, M, T)
        power = torch.exp(log_mel)
        linear = torch.relu(torch.einsum("fm,bmt->bft", self.pinv, power))
        mel = torch.einsum("kf,bft->bkt", self.to_mel, linear)  # (B, 40, T)
        return torch.einsum("ut,bkt->buk", self.time, mel)  # (B, T', 40)
