"""Guides built on log-Mel classifiers: noise-conditioned (the classic baseline) and repurposed clean.

Noise-conditioned classifier guidance (Dhariwal & Nichol 2021; Guided-TTS, Kim et al. 2022):
    grad_x log p(y | x_t, sigma), the classifier sees the noisy sample and sigma.
Repurposed clean classifier: a classifier never trained on noise reads the denoised estimate
x0_hat(x_t, sigma) instead; its per-sigma temperature, sigma window and norm-based scaling come
from the profile.
"""

from __future__ import annotations

import torch

from guidance.diffusion.schedule import SIGMA_MIN
from guidance.guides.base import Guide
from guidance.models.checkpoint import ModelFile
from guidance.models.classifier import LogMelClassifier


def log_prob_from_logits(logits: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log softmax(logits / T)[y]: (B,) log-likelihood of each row's target at its own temperature."""
    scaled = logits / temperature.to(logits.dtype).view(-1, 1)
    return torch.log_softmax(scaled, dim=-1).gather(1, target.view(-1, 1).to(logits.device)).squeeze(1)


class ClassifierGuide(Guide):
    def __init__(self, model: LogMelClassifier, labels: list[str], name: str = "digit") -> None:
        self.model = model.eval().requires_grad_(False)
        self.labels = list(labels)
        self.name = name
        self.needs_sigma = bool(model.config.noise_conditioned)

    @classmethod
    def from_file(cls, mf: ModelFile, name: str | None = None) -> "ClassifierGuide":
        if mf.kind != "classifier":
            raise ValueError(f"{mf.path} holds a {mf.kind!r} model, not a classifier")
        return cls(mf.model, mf.labels, name or mf.task or "digit")

    def logits(self, inp: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
        return self.model(inp, sigma if self.needs_sigma else None)

    def log_prob(self, inp: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        return log_prob_from_logits(self.logits(inp, sigma), target, temperature)

    @torch.no_grad()
    def probabilities(self, mels: torch.Tensor) -> torch.Tensor:
        """Class probabilities on clean samples (sigma ~ 0), for reports and manifests."""
        sigma = torch.full((mels.shape[0],), SIGMA_MIN, device=mels.device)
        return torch.softmax(self.logits(mels, sigma), dim=-1)
