"""Log-Mel CNN classifiers: clean, or noise-conditioned (sigma through c_in scaling and FiLM).

Both return logits *and* the feature map after every stage, so guides and the single-backbone
generator can read intermediate activations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from guidance.diffusion.precond import edm_coefficients
from guidance.models.layers import FiLMResBlock, NoiseEmbedding
from guidance.models.model_file import from_dict


@dataclass(frozen=True)
class ClassifierConfig:
    num_classes: int = 10
    channels: tuple[int, ...] = (16, 32, 64, 128)
    noise_conditioned: bool = False
    emb_dim: int = 128
    sigma_data: float = 1.0
    dropout: float = 0.1


@dataclass
class ClassifierOutput:
    logits: torch.Tensor
    features: list[torch.Tensor]


class LogMelClassifier(nn.Module):
    """Residual CNN over (B, 1, mels, frames); each stage halves both axes.

    Clean flavour: BatchNorm, no sigma input. Noise-conditioned flavour: GroupNorm, the input is
    scaled by c_in(sigma) as in EDM and every block is FiLM-modulated by the noise embedding.
    """

    def __init__(self, config: ClassifierConfig = ClassifierConfig()) -> None:
        super().__init__()
        self.config = config
        emb = config.emb_dim if config.noise_conditioned else None
        self.embed = NoiseEmbedding(config.emb_dim) if config.noise_conditioned else None
        norm = "group" if config.noise_conditioned else "batch"
        self.stem = nn.Conv2d(1, config.channels[0], 3, padding=1)
        c = config.channels[0]
        self.stages = nn.ModuleList()
        for c_out in config.channels:
            self.stages.append(FiLMResBlock(c, c_out, emb, norm=norm))
            c = c_out
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(c, config.num_classes))

    def forward_with_features(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> ClassifierOutput:
        emb = None
        if self.config.noise_conditioned:
            if sigma is None:
                raise ValueError("a noise-conditioned classifier needs sigma")
            sigma = sigma.to(x.dtype).reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.to(x.dtype)
            _, _, c_in, c_noise = edm_coefficients(sigma, self.config.sigma_data)
            x = x * c_in.view(-1, 1, 1, 1)
            emb = self.embed(c_noise)
        h = self.stem(x)
        features = []
        for stage in self.stages:
            h = stage(h, emb)
            features.append(h)
            h = nn.functional.avg_pool2d(h, 2)
        logits = self.head(h.mean(dim=(2, 3)))
        return ClassifierOutput(logits, features)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_features(x, sigma).logits


def build_classifier(cfg: dict) -> LogMelClassifier:
    """The model-file builder of kind "classifier": the network from its metadata config."""
    return LogMelClassifier(from_dict(ClassifierConfig, cfg))
