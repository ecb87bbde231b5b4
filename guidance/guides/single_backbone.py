"""A single-backbone generator (ScoreSubnet) as a provider of the guided denoiser's calls.

The backbone is a noise-conditioned classifier. One backbone forward with autograd on feeds the subnet
its taps (the denoiser call) and gives grad_x log p(y | x, sigma) through the head for every gradient
call that asks the backbone's own classifier about x_t (one extra backward, no second forward). Any
other gradient call (another guide, x0_hat input, randomized smoothing, which needs several passes) is
answered by its guide, as in-process. The formula that combines the answers is the engine's alone.
"""

from __future__ import annotations

import torch

from guidance.guides.classifier import log_prob_from_logits
from guidance.guides.engine import Answer, Call, DenoiseCall, Denoised, Gradient, GradientCall, answer_gradient
from guidance.models.score_subnet import SingleBackboneModel


def shares_backbone(model: SingleBackboneModel, call: GradientCall) -> bool:
    """Whether the backbone pass of this step can answer the gradient call."""
    guide, settings = call.term.guide, call.term.settings
    return getattr(guide, "model", None) is model.backbone and call.reads == "x_t" and settings.smoothing <= 0


class SingleBackboneProvider:
    """Answers a denoiser call and the gradient calls of the backbone's own head from one backbone pass."""

    def __init__(self, model: SingleBackboneModel) -> None:
        self.model = model

    def answer(self, calls: list[Call]) -> list[Answer]:
        den = [c for c in calls if isinstance(c, DenoiseCall)]
        if not den:
            return [answer_gradient(c) for c in calls]  # type: ignore[arg-type]
        x, sigma = den[0].x, den[0].sigma
        shared = [c for c in calls if isinstance(c, GradientCall) and c.inp is x and shares_backbone(self.model, c)]
        x_leaf, out = self.model.backbone_graph(x, sigma)
        answers: dict[int, Answer] = {}
        with torch.enable_grad():
            for c in shared:  # grad_x log p(y | x, sigma) through the head, on the same graph
                temperature = c.term.settings.temperature_at(sigma).to(x.dtype)
                logp = log_prob_from_logits(out.logits, c.term.target, temperature)
                (g,) = torch.autograd.grad(logp.sum(), x_leaf, retain_graph=True)
                answers[id(c)] = Gradient(g, logp.detach())
        taps = self.model.taps_from(out)
        with torch.no_grad():
            denoised = self.model.denoise(x, sigma, taps)
        return [
            Denoised(denoised) if isinstance(c, DenoiseCall) else answers.get(id(c)) or answer_gradient(c)  # type: ignore[arg-type]
            for c in calls
        ]
