"""Zero-shot voice guidance by spectral statistics: match the reference's long-term spectrum and spread.

Nothing here is trained. A reference clip is summarised by two curves over Mel bands, measured on the
same normalized log-Mel the generator produces: the long-term average spectrum (LTAS: the mean of each
band over frames, loud frames weighted more) and the per-band spread (the weighted standard deviation).
Together they carry a speaker's timbre and recording channel: spectral tilt, formant regions and how
much each band moves. A classic forensic speaker feature, and unlike a deep encoder's embedding a
smooth function of the input, so its gradient moves the voice instead of exploiting the model
(the encoder guide's failure mode, `reports/voice-val-sweep.md`).

log p(speaker | x) := -(mean_b (mu_b(x) - mu_b(ref))^2 + w * mean_b (s_b(x) - s_b(ref))^2) / temperature
"""

from __future__ import annotations

import torch
import torchaudio

from guidance.edm_constants import SIGMA_MAX
from guidance.features import FeatureSpec, LogMel, fit_length
from guidance.guides.profile import GuideSettings
from guidance.guides.reference import ReferenceGuide
from guidance.spectral_stats import DEFAULT_FRAME_SHARPNESS, spectral_statistics

# Picked on the validation split (reports/voice-val-sweep.md): frames weighted by softmax(0.5 * loudness),
# spread weighted 0.3 against the mean, norm-scaled 0.1 of the denoiser's step for sigma 1..80.
DEFAULT_SPREAD_WEIGHT = 0.3
DEFAULT_STATS_SETTINGS = GuideSettings(scale=0.1, norm_scaling=True, sigma_lo=1.0, sigma_hi=SIGMA_MAX, input="x0_hat")


class VoiceStatsGuide(ReferenceGuide):
    """Closeness of a sample's spectral statistics to a reference voice's; the target index picks the reference."""

    kind = "stats"
    default_settings = DEFAULT_STATS_SETTINGS

    def __init__(
        self, spec: FeatureSpec, device: str | torch.device = "cpu",
        frame_sharpness: float = DEFAULT_FRAME_SHARPNESS, spread_weight: float = DEFAULT_SPREAD_WEIGHT,
    ) -> None:
        if frame_sharpness < 0 or spread_weight < 0:
            raise ValueError(f"frame_sharpness and spread_weight must be >= 0, got {frame_sharpness} and {spread_weight}")
        super().__init__(spec, device)
        self.frame_sharpness = frame_sharpness
        self.spread_weight = spread_weight
        self.log_mel = LogMel(spec).to(self.device)
        self.references = torch.empty(0, 2, spec.n_mels, device=self.device)

    def statistics(self, mels: torch.Tensor) -> torch.Tensor:
        return spectral_statistics(mels.to(self.device), self.frame_sharpness)

    def reference_features(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if sample_rate != self.spec.sample_rate:
            wave = torchaudio.functional.resample(wave, sample_rate, self.spec.sample_rate)
        with torch.no_grad():
            return self.statistics(self.log_mel(wave.to(self.device)))

    def distance(self, mels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) weighted mean squared difference of the statistics to each sample's reference (0 = the same)."""
        diff = self.statistics(mels) - self.references[target.to(self.device)]
        return (diff[:, 0] ** 2).mean(1) + self.spread_weight * (diff[:, 1] ** 2).mean(1)

    def log_prob(self, inp: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        d = self.distance(inp, target)
        return -d / temperature.to(d.device)

    def score(self, mels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The guide's own closeness to the reference: minus the distance (higher is closer)."""
        return -self.distance(mels, target)


def words_said(classifier, waves: torch.Tensor, spec: FeatureSpec, device: str | torch.device = "cpu") -> torch.Tensor:
    """(R,) the word each reference clip (R, samples) says, as `classifier` (a guide with `probabilities`) hears
    it: no label is read, so a user's own reference works the same as an FSDD clip."""
    mels = reference_mels(waves, spec)
    with torch.no_grad():
        return classifier.probabilities(mels.to(device)).argmax(1).cpu()


def reference_mels(waves, spec: FeatureSpec) -> torch.Tensor:
    """(R, 1, M, T) normalized log-Mels of reference clips, each cut or padded to the model's clip length."""
    with torch.no_grad():
        return LogMel(spec)(torch.stack([fit_length(w.reshape(-1), spec.num_samples) for w in waves]))
