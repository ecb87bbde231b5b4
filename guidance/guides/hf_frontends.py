"""Differentiable adapters from the project's normalized log-Mel to Hugging Face audio model inputs.

A Hugging Face audio classifier expects what its feature extractor makes from a waveform: raw
`input_values` for wav2vec2/HuBERT-style models, a Kaldi log filterbank for AST. A guide reads the
project's normalized log-Mel x0_hat (B, 1, M, T), so each adapter rebuilds the model's input from
it with differentiable tensor operations only, and the classifier's gradient flows back to the
log-Mel.

Both adapters share one step, mel power -> linear power per STFT bin (`mel_to_linear_matrix`):
each linear bin takes the mean power density of the Mel bands that cover it, weighted by the
bands' triangles. It is non-negative, exact for a flat spectrum and smooth. The Moore-Penrose
pseudo-inverse rings into negative power that has to be clamped: against ASTFeatureExtractor on
20 FSDD validation clips it correlates 0.854 against this one's 0.896 (`measure_fidelity`,
`python -m guidance.guides.hf_frontends val 20 pinv` and `... val 20 interp`).

FSDD is recorded at 8 kHz: the project's 16 kHz features hold nothing above 4 kHz but the
log floor, and what a diffusion model writes there is meaningless, so the adapters zero the
linear spectrum above `band_limit_hz` (4 kHz by default) before building the model's input.
"""

from __future__ import annotations

import math

import torch
import torchaudio

from guidance.features import FeatureSpec

FSDD_BAND_LIMIT_HZ = 4000.0  # FSDD's Nyquist frequency: nothing real lies above it
KALDI_EPS = torch.finfo(torch.float32).eps  # the floor torchaudio's Kaldi fbank puts under log
MAX_LOG_POWER = 30.0  # far above any real clip's log-Mel power (FSDD validation: at most 10.5)


class UnsupportedFeatureExtractor(ValueError):
    """The model's feature extractor is of a kind no adapter here reproduces."""


def project_mel_bank(spec: FeatureSpec) -> torch.Tensor:
    """The (n_stft, n_mels) triangular filterbank `guidance.features.LogMel` applies (torchaudio's)."""
    return torchaudio.functional.melscale_fbanks(
        spec.n_fft // 2 + 1, spec.f_min, spec.f_max, spec.n_mels, spec.sample_rate, norm=None, mel_scale="htk"
    )


def mel_to_linear_matrix(spec: FeatureSpec, method: str = "interp") -> torch.Tensor:
    """(n_stft, n_mels) matrix W with linear power ~= W @ mel power, for one STFT frame.

    interp: P(f) = sum_m A[m, f] * (mel_m / area_m) / sum_m A[m, f], a triangle-weighted mean of
    the bands' per-bin power density (zero where no band reaches). pinv: the least-squares inverse.
    """
    bank = project_mel_bank(spec).double()  # (F, M)
    if method == "pinv":
        return torch.linalg.pinv(bank.T).float()
    if method != "interp":
        raise ValueError(f"method must be 'interp' or 'pinv', got {method!r}")
    area = bank.sum(0).clamp_min(1e-12)  # (M,) bins under each triangle
    cover = bank.sum(1, keepdim=True)  # (F, 1)
    weights = torch.where(cover > 0, bank / cover.clamp_min(1e-12), torch.zeros_like(bank))
    return (weights / area).float()


def band_mask(n_stft: int, sample_rate: int, band_limit_hz: float | None) -> torch.Tensor:
    """(n_stft,) 1 below the band limit, 0 above (all ones without a limit)."""
    freqs = torch.linspace(0, sample_rate / 2, n_stft)
    if band_limit_hz is None:
        return torch.ones(n_stft)
    return (freqs <= band_limit_hz + 1e-6).float()


class MelToLinear(torch.nn.Module):
    """Normalized log-Mel (B, 1, M, T) -> linear STFT power (B, F, T) of the project's STFT."""

    def __init__(self, spec: FeatureSpec, band_limit_hz: float | None = FSDD_BAND_LIMIT_HZ, method: str = "interp") -> None:
        super().__init__()
        self.spec = spec
        matrix = mel_to_linear_matrix(spec, method) * band_mask(spec.n_fft // 2 + 1, spec.sample_rate, band_limit_hz)[:, None]
        self.register_buffer("matrix", matrix, persistent=False)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        mel = logmel.squeeze(1).float() * self.spec.std + self.spec.mean
        # x0_hat at high noise can hold values no real clip has; exp would overflow float32 (NaN
        # downstream). Below the floor LogMel never writes anything either.
        mel = mel.clamp(math.log(self.spec.log_floor), MAX_LOG_POWER)
        power = torch.exp(mel)  # (B, M, T)
        return torch.einsum("fm,bmt->bft", self.matrix, power).clamp_min(0.0)


def _interp_matrix(src_times: torch.Tensor, dst_times: torch.Tensor) -> torch.Tensor:
    """(len(src), len(dst)) linear interpolation weights along time, clamped at the ends."""
    pos = ((dst_times - src_times[0]) / (src_times[1] - src_times[0])).clamp(0, len(src_times) - 1)
    lo = pos.floor().long().clamp(max=len(src_times) - 2)
    frac = pos - lo
    w = torch.zeros(len(src_times), len(dst_times))
    cols = torch.arange(len(dst_times))
    w[lo, cols] += 1 - frac
    w[lo + 1, cols] += frac
    return w


class KaldiFbankFrontEnd(torch.nn.Module):
    """Normalized log-Mel -> AST `input_values` (B, max_length, num_mel_bins), as ASTFeatureExtractor makes them.

    ASTFeatureExtractor runs torchaudio's Kaldi fbank (25 ms Hann frames every 10 ms, 512-point FFT,
    DC removal, pre-emphasis 0.97, Kaldi Mel bank from 20 Hz to Nyquist, log with a float-eps floor),
    zero-pads or crops to `max_length` frames, then maps x -> (x - mean) / (2 std). Here: linear power
    of the project's STFT, rescaled to a 400-sample Hann frame's energy, times the pre-emphasis gain,
    sampled at the 512-point FFT's bins, through the Kaldi Mel bank, log, then interpolated from the
    project's frame centres to Kaldi's (snip-edges) frame centres, padded and normalized the same way.
    Time and frequency resolution differ from a real 25 ms analysis, so this is close, not exact.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        max_length: int = 1024,
        mean: float = -4.2677393,
        std: float = 4.5689974,
        do_normalize: bool = True,
        band_limit_hz: float | None = FSDD_BAND_LIMIT_HZ,
        method: str = "interp",
    ) -> None:
        super().__init__()
        if sampling_rate != spec.sample_rate:
            raise UnsupportedFeatureExtractor(
                f"AST front end at {sampling_rate} Hz: this adapter maps the project's {spec.sample_rate} Hz features only"
            )
        self.spec, self.max_length, self.num_mel_bins = spec, int(max_length), int(num_mel_bins)
        self.mean, self.std, self.do_normalize = float(mean), float(std), bool(do_normalize)
        self.to_linear = MelToLinear(spec, band_limit_hz, method)
        frame, shift, n_fft = int(0.025 * sampling_rate), int(0.010 * sampling_rate), 512
        window = torch.hann_window(frame, periodic=False, dtype=torch.float64)
        project_window = torch.hann_window(spec.n_fft, dtype=torch.float64)
        energy_ratio = float((window**2).sum() / (project_window**2).sum())
        n_bins = n_fft // 2 + 1
        freqs = torch.arange(n_bins, dtype=torch.float64) * sampling_rate / n_fft
        omega = 2 * math.pi * freqs / sampling_rate
        preemph = 1 + 0.97**2 - 2 * 0.97 * torch.cos(omega)
        # Kaldi's bank over the 512-point FFT's bins (it leaves out Nyquist), then resample the
        # project's bins (spacing sr/n_fft) onto those frequencies by linear interpolation.
        kaldi_bank, _ = torchaudio.compliance.kaldi.get_mel_banks(num_mel_bins, n_fft, float(sampling_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
        kaldi_bank = torch.nn.functional.pad(kaldi_bank.double(), (0, 1))  # (num_mel_bins, n_bins)
        src = torch.arange(spec.n_fft // 2 + 1, dtype=torch.float64) * spec.sample_rate / spec.n_fft
        resample = _interp_matrix(src, freqs).double()  # (F, n_bins)
        full = resample @ (energy_ratio * preemph[:, None] * kaldi_bank.T)  # (F, num_mel_bins)
        self.register_buffer("bank", full.float(), persistent=False)
        n_kaldi = 1 + (spec.num_samples - frame) // shift
        src_t = torch.arange(spec.frames, dtype=torch.float64) * spec.hop_length
        dst_t = torch.arange(n_kaldi, dtype=torch.float64) * shift + frame / 2
        self.register_buffer("time", _interp_matrix(src_t, dst_t).float(), persistent=False)

    @property
    def frames(self) -> int:
        """Kaldi frames a clip of the project's length yields, before padding to max_length."""
        return self.time.shape[1]

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        power = self.to_linear(logmel)  # (B, F, T)
        fbank = torch.einsum("fk,bft->bkt", self.bank, power)
        logfb = torch.log(fbank.clamp_min(KALDI_EPS))
        logfb = torch.einsum("bkt,ts->bsk", logfb, self.time)  # (B, frames, num_mel_bins)
        n = logfb.shape[1]
        if n < self.max_length:
            logfb = torch.nn.functional.pad(logfb, (0, 0, 0, self.max_length - n))
        else:
            logfb = logfb[:, : self.max_length]
        if self.do_normalize:
            logfb = (logfb - self.mean) / (2 * self.std)
        return logfb


class WaveformFrontEnd(torch.nn.Module):
    """Normalized log-Mel -> wav2vec2/HuBERT `input_values` (B, samples) at the model's sampling rate.

    Path: Mel power -> linear power (`MelToLinear`) -> magnitude, band-limited -> phase from
    `n_iter` Griffin-Lim iterations (fast GL, momentum 0.99) started from a fixed seeded random phase
    -> inverse STFT with that phase -> `torchaudio.functional.resample` to the model's rate ->
    zero-mean unit-variance per clip when the extractor has `do_normalize` (as
    Wav2Vec2FeatureExtractor: (x - mean) / sqrt(var + 1e-7)).

    Why the phase is computed without gradient: the waveform is then linear in the magnitude for
    a given phase, so the gradient is the adjoint of one inverse STFT, cheap and well conditioned.
    Backpropagating through the iterations would cost `n_iter` STFT pairs per step and pass through
    x / |x| at near-silent bins, where it is unbounded. Phase still depends on the spectrogram (GL
    runs on it every call) and on nothing else: the seed is fixed, so equal inputs give equal waves.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        sampling_rate: int = 16000,
        do_normalize: bool = True,
        n_iter: int = 16,
        seed: int = 0,
        band_limit_hz: float | None = FSDD_BAND_LIMIT_HZ,
        method: str = "interp",
    ) -> None:
        super().__init__()
        self.spec, self.sampling_rate, self.do_normalize = spec, int(sampling_rate), bool(do_normalize)
        self.n_iter, self.seed = int(n_iter), int(seed)
        self.to_linear = MelToLinear(spec, band_limit_hz, method)
        self.register_buffer("window", torch.hann_window(spec.n_fft), persistent=False)

    def _stft(self, wave: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return torch.stft(wave, s.n_fft, s.hop_length, window=self.window, center=True, return_complex=True)

    def _istft(self, spec_c: torch.Tensor) -> torch.Tensor:
        s = self.spec
        return torch.istft(spec_c, s.n_fft, s.hop_length, window=self.window, center=True, length=s.num_samples)

    @torch.no_grad()
    def phase(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Unit-modulus phase (B, F, T) by fast Griffin-Lim from a seeded random start."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        angles = torch.rand(magnitude.shape[1:], generator=gen, dtype=torch.float32) * 2 * math.pi
        angles = torch.polar(torch.ones_like(angles), angles).to(magnitude.device).expand_as(magnitude).clone()
        previous = torch.zeros_like(angles)
        for _ in range(self.n_iter):
            rebuilt = self._stft(self._istft(magnitude * angles))
            accel = rebuilt - 0.99 / (1 + 0.99) * previous
            angles = accel / accel.abs().clamp_min(1e-16)
            previous = rebuilt
        return angles

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        power = self.to_linear(logmel)
        magnitude = torch.sqrt(power + 1e-12)
        wave = self._istft(magnitude * self.phase(magnitude.detach()))
        if self.sampling_rate != self.spec.sample_rate:
            wave = torchaudio.functional.resample(wave, self.spec.sample_rate, self.sampling_rate)
        if self.do_normalize:
            wave = (wave - wave.mean(-1, keepdim=True)) / torch.sqrt(wave.var(-1, unbiased=False, keepdim=True) + 1e-7)
        return wave


WAVEFORM_EXTRACTORS = ("Wav2Vec2FeatureExtractor",)
FILTERBANK_EXTRACTORS = ("ASTFeatureExtractor",)


def frontend_for(extractor, spec: FeatureSpec, band_limit_hz: float | None = FSDD_BAND_LIMIT_HZ) -> torch.nn.Module:
    """The adapter that reproduces `extractor` (a transformers feature extractor), parametrized from its config."""
    kind = type(extractor).__name__
    if kind in FILTERBANK_EXTRACTORS:
        return KaldiFbankFrontEnd(
            spec,
            sampling_rate=extractor.sampling_rate,
            num_mel_bins=extractor.num_mel_bins,
            max_length=extractor.max_length,
            mean=extractor.mean,
            std=extractor.std,
            do_normalize=extractor.do_normalize,
            band_limit_hz=band_limit_hz,
        )
    if kind in WAVEFORM_EXTRACTORS:
        if getattr(extractor, "feature_size", 1) != 1:
            raise UnsupportedFeatureExtractor(f"{kind} with feature_size {extractor.feature_size}: expected raw mono audio")
        return WaveformFrontEnd(spec, sampling_rate=extractor.sampling_rate, do_normalize=extractor.do_normalize, band_limit_hz=band_limit_hz)
    raise UnsupportedFeatureExtractor(
        f"feature extractor {kind} is not supported; supported: waveform models ({', '.join(WAVEFORM_EXTRACTORS)}: "
        f"wav2vec2, HuBERT, WavLM, ...) and filterbank models ({', '.join(FILTERBANK_EXTRACTORS)}: AST)"
    )


def measure_fidelity(split: str = "val", clips: int = 20, method: str = "interp", root: str | None = None) -> dict[str, float]:
    """How close the adapters come to the real extractors on FSDD clips (evenly spaced over `split`).

    fbank_*: KaldiFbankFrontEnd against ASTFeatureExtractor on the same waveform (the 99 real frames;
    all bins and the 96 below 4 kHz). wave_*: the project's log-Mel of WaveformFrontEnd's waveform
    against the log-Mel it was made from (48 bands below 4 kHz). Pearson correlations, mean and min.
    """
    from transformers import ASTFeatureExtractor

    from guidance.data import fsdd_split, list_fsdd, load_wave, resolve_fsdd_root
    from guidance.features import LogMel, fit_length
    from guidance.spec import project_spec

    spec = project_spec(root)
    all_clips = fsdd_split(list_fsdd(resolve_fsdd_root(root)), split)
    chosen = all_clips[:: max(1, len(all_clips) // clips)][:clips]
    waves = torch.stack([fit_length(load_wave(c.path, spec.sample_rate), spec.num_samples) for c in chosen])
    mels = LogMel(spec)(waves)
    extractor = ASTFeatureExtractor(max_length=128)
    fbank = KaldiFbankFrontEnd(spec, max_length=128, method=method)
    waveform = WaveformFrontEnd(spec, do_normalize=False, method=method)
    rebuilt = LogMel(spec)(waveform(mels))
    n = fbank.frames

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    scores: dict[str, list[float]] = {"fbank_corr": [], "fbank_corr_below_4k": [], "fbank_mae": [], "wave_corr_below_4k": []}
    for i, wave in enumerate(waves):
        ref = extractor(wave.numpy(), sampling_rate=spec.sample_rate, return_tensors="pt")["input_values"][0, :n]
        out = fbank(mels[i : i + 1])[0, :n]
        scores["fbank_corr"].append(corr(out, ref))
        scores["fbank_corr_below_4k"].append(corr(out[:, :96], ref[:, :96]))
        scores["fbank_mae"].append(float((out - ref).abs().mean()))
        scores["wave_corr_below_4k"].append(corr(rebuilt[i, 0, :48], mels[i, 0, :48]))
    out_scores = {"clips": float(len(waves))}
    for key, values in scores.items():
        out_scores[f"{key}_mean"] = round(sum(values) / len(values), 4)
        out_scores[f"{key}_{'max' if key.endswith('mae') else 'min'}"] = round(max(values) if key.endswith("mae") else min(values), 4)
    return out_scores


if __name__ == "__main__":  # python -m guidance.guides.hf_frontends [split [clips [interp|pinv]]]
    import json
    import sys

    args = sys.argv[1:]
    split, n, how = (args + ["val", "20", "interp"][len(args) :])[:3]
    print(json.dumps(measure_fidelity(split, int(n), how)))
