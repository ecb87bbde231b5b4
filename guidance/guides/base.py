"""One interface for every guide, the gradient of one guide term, and the formula of its delta.

A guide is a differentiable log-likelihood log p(y | input, sigma) over normalized log-Mels.
It declares what it reads: `needs_sigma` (noise-conditioned, reads x_t) or not (a clean
classifier, which reads x0_hat by default). The guided denoiser that adds their gradients to D is
written once, in `guidance.guides.engine`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from guidance.guides.profile import GuideSettings


class Guide(ABC):
    """log p(target | input, sigma) for a batch; subclasses say what input they need."""

    name: str = "guide"
    labels: list[str] = []
    needs_sigma: bool = False

    @abstractmethod
    def log_prob(self, inp: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """Differentiable (B,) log-likelihood of `target` (B,) given `inp` (B, 1, M, T)."""

    def label_index(self, label: str) -> int:
        if label not in self.labels:
            raise KeyError(f"guide {self.name!r} has no label {label!r}; known: {', '.join(self.labels)}")
        return self.labels.index(label)

    def reads_x_t(self, settings: GuideSettings) -> bool:
        return self.needs_sigma or settings.input == "x_t"

    def request_table(self) -> torch.Tensor | None:
        """The rows a request adds to this guide and its targets index (a voice guide's reference features, the
        pitch guide's target lines), or None. A guide host keeps none: they travel with every gradient call."""
        return None

    def with_request_table(self, rows: torch.Tensor) -> "Guide":
        """A shallow copy whose request table is `rows` (how a guide host answers one request's call)."""
        raise TypeError(f"the {self.name!r} guide has no request table")


@dataclass
class GuideTerm:
    """One guide with its per-sample targets, weight in a composite, and settings."""

    guide: Guide
    target: torch.Tensor  # (B,) class indices
    settings: GuideSettings
    weight: float = 1.0


@dataclass
class DenoiserGraph:
    """x0_hat = D(x_t, sigma) computed with autograd on, and the x_t leaf it came from."""

    x: torch.Tensor
    denoised: torch.Tensor


def guide_gradient(
    term: GuideTerm, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor, graph: DenoiserGraph | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the term's log-likelihood with respect to x_t, and the log-likelihood itself.

    Clean guides read x0_hat. Without `through_denoiser` the gradient wrt x0_hat stands in for the
    one wrt x_t (the identity approximation of dx0_hat/dx_t); with it, autograd runs through D.
    """
    s = term.settings
    temperature = s.temperature_at(sigma)
    with torch.enable_grad():
        if term.guide.reads_x_t(s):
            inp = wrt = x.detach().requires_grad_(True)
        elif s.through_denoiser:
            if graph is None:
                raise ValueError("through_denoiser needs the denoiser's graph")
            inp, wrt = graph.denoised, graph.x
        else:
            inp = wrt = denoised.detach().requires_grad_(True)
        logp = _log_prob(term, inp, sigma, temperature)
        (grad,) = torch.autograd.grad(logp.sum(), wrt, retain_graph=graph is not None)
    return grad, logp.detach()


def _log_prob(term: GuideTerm, inp: torch.Tensor, sigma: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """log p(y | inp), or its average over Gaussian perturbations of inp (randomized smoothing).

    Smoothing makes a classifier's gradient follow what is robustly class-like rather than
    adversarial detail the classifier alone reacts to. Draws are seeded: the same input gives the
    same gradient.
    """
    s = term.settings
    if s.smoothing <= 0:
        return term.guide.log_prob(inp, sigma, term.target, temperature)
    k = s.smoothing_samples
    gen = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn((k, *inp.shape), generator=gen, dtype=torch.float32).to(inp.device, inp.dtype)
    batch = (inp.unsqueeze(0) + s.smoothing * noise).flatten(0, 1)
    logp = term.guide.log_prob(batch, sigma.repeat(k), term.target.repeat(k), temperature.repeat(k))
    return logp.view(k, -1).mean(0)


def guidance_delta(
    settings: GuideSettings, strength: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor
) -> torch.Tensor:
    """What one guide adds to D(x, sigma), given its gradient wrt x_t (one formula for every guided denoiser).

    plain: strength * sigma^2 * grad (classifier guidance in EDM form);
    norm scaling: strength * ||D - x|| * grad / ||grad|| (Guided-TTS).
    """
    k = strength.view(-1, 1, 1, 1)
    if settings.norm_scaling:
        step_norm = (denoised - x).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        unit = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return k * step_norm * unit
    return k * sigma.view(-1, 1, 1, 1) ** 2 * grad
