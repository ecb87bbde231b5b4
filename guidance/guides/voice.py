"""Zero-shot voice guidance: resemblyzer's shipped speaker encoder, frozen, steers towards a reference voice.

The encoder (a 3-layer LSTM d-vector model, GE2E-trained by resemblyzer's authors on other speakers)
is rebuilt here layer for layer and its weights are read from the file that installs with the
package (`resemblyzer/pretrained.pt`) with `torch.load(weights_only=True)`. Nothing imports
resemblyzer itself (whose audio module pulls in webrtcvad and pkg_resources), and nothing here is
ever trained: the encoder has never seen an FSDD speaker.

log p(speaker | x) := cos(e(x), e_ref) / temperature, an unnormalised von Mises-Fisher log-density
on the unit sphere of embeddings with concentration kappa = 1 / temperature. e(x) is the encoder's
embedding of the sample's x0 estimate through `LogMelToEncoderMel`; e_ref the embedding of the
reference WAV through the encoder's own front end.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from guidance.edm_constants import SIGMA_MAX
from guidance.features import FeatureSpec
from guidance.guides.adapters import EncoderFrontEnd, LogMelToEncoderMel, reference_mel
from guidance.guides.reference import ReferenceGuide
from guidance.guides.profile import GuideSettings

HIDDEN = 256
LAYERS = 3
EMBEDDING = 256


def shipped_weights_path() -> Path:
    """resemblyzer's `pretrained.pt`, located without importing the package."""
    found = importlib.util.find_spec("resemblyzer")
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError("the resemblyzer package is not installed (its pretrained.pt is the speaker encoder)")
    path = Path(next(iter(found.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise FileNotFoundError(f"resemblyzer's speaker encoder weights are missing: {path}")
    return path


class SpeakerEncoder(torch.nn.Module):
    """resemblyzer's VoiceEncoder network: Mel frames (B, T, 40) -> L2-normed embedding (B, 256)."""

    def __init__(self, n_mels: int = EncoderFrontEnd().n_mels) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(n_mels, HIDDEN, LAYERS, batch_first=True)
        self.linear = torch.nn.Linear(HIDDEN, EMBEDDING)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        # cuDNN's RNN backward refuses eval mode; guidance needs gradients of the frozen, eval-mode LSTM
        cudnn_ok = not (mels.is_cuda and torch.is_grad_enabled() and mels.requires_grad)
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled and cudnn_ok):
            _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @classmethod
    def shipped(cls, device: str | torch.device = "cpu", path: Path | None = None) -> "SpeakerEncoder":
        """The encoder exactly as shipped, frozen and in eval mode."""
        checkpoint = torch.load(path or shipped_weights_path(), map_location="cpu", weights_only=True)
        state = {k: v for k, v in checkpoint["model_state"].items() if k.startswith(("lstm.", "linear."))}
        model = cls()
        model.load_state_dict(state, strict=True)  # the GE2E similarity scalars are training-only
        return model.to(device).eval().requires_grad_(False)


# Where the voice guide acts by default: rescaled to a fraction of the denoiser's own step (its raw
# gradient scale has nothing to do with a classifier's), on the x0 estimate, for sigma 1..80, with the
# gradient blurred over 7x7 bins (`low_pass_gradient`). Picked on the validation split
# (reports/voice-val-sweep.md); from scale 0.15 up the samples lose both voice and digit, at 0.6 they blow up.
DEFAULT_VOICE_SETTINGS = GuideSettings(scale=0.1, norm_scaling=True, sigma_lo=1.0, sigma_hi=SIGMA_MAX, input="x0_hat")
DEFAULT_GRADIENT_BLUR = 7


class VoiceGuide(ReferenceGuide):
    """Cosine similarity of speaker-encoder embeddings to reference voices; the target index picks the reference."""

    name = "speaker"
    kind = "encoder"
    default_settings = DEFAULT_VOICE_SETTINGS

    def __init__(
        self, spec: FeatureSpec, encoder: SpeakerEncoder | None = None, device: str | torch.device = "cpu",
        gradient_blur: int = DEFAULT_GRADIENT_BLUR,
    ) -> None:
        super().__init__(spec, device)
        self.gradient_blur = gradient_blur
        self.encoder = (encoder or SpeakerEncoder.shipped(self.device)).to(self.device).eval().requires_grad_(False)
        self.adapter = LogMelToEncoderMel(spec).to(self.device)
        self.references = torch.empty(0, EMBEDDING, device=self.device)

    def embed_mels(self, mels: torch.Tensor) -> torch.Tensor:
        """Embeddings of normalized log-Mels (B, 1, M, T) through the adapter (differentiable)."""
        return self.encoder(self.adapter(mels.to(self.device)))

    def embed_waves(self, waves: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Embeddings of waveforms (B, samples) through the encoder's own front end (the reference path)."""
        if sample_rate != EncoderFrontEnd().sample_rate:
            raise ValueError(f"the speaker encoder hears {EncoderFrontEnd().sample_rate} Hz audio, got {sample_rate}")
        with torch.no_grad():
            return self.encoder(reference_mel(waves.to(self.device)))

    def reference_features(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return self.embed_waves(wave, sample_rate)

    def log_prob(self, inp: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(low_pass_gradient(inp, self.gradient_blur), target)
        return cos / temperature.to(cos.device)

    def score(self, mels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The guide's own closeness to the reference: the cosine (higher is closer)."""
        return self.cosine(mels, target)

    def cosine(self, mels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) cosine between each sample's embedding and its target reference's."""
        ref = self.references[target.to(self.device)]
        return (self.embed_mels(mels) * ref).sum(dim=1)


def low_pass_gradient(x: torch.Tensor, size: int) -> torch.Tensor:
    """x itself in the forward pass; in the backward pass the gradient is box-blurred over size x size
    Mel bins and frames. The encoder's raw gradient is dominated by bin-level detail that changes its
    embedding without changing the voice (adversarial); blurring keeps the coarse spectral shape."""
    if size <= 1:
        return x
    if size % 2 == 0:
        raise ValueError(f"gradient blur must be an odd number of bins, got {size}")
    blurred = torch.nn.functional.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)
    return blurred + (x - blurred).detach()
