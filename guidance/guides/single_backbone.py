"""The single-backbone generator guided by its own backbone: D_y from ONE backbone pass per call.

The model (`guidance.models.score_subnet.SingleBackboneModel`) knows nothing of guides; this wrapper
combines its denoiser output with the guide terms, as `GuidedDenoiser` does for any denoiser.
"""

from __future__ import annotations

import torch

from guidance.guides.base import GuideTerm, active_terms, guidance_delta, guide_gradient
from guidance.models.score_subnet import SingleBackboneModel, per_sample_sigma


class GuidedSingleBackbone:
    """D_y(x, sigma) = D(x, sigma) + sum_k w_k delta_k, with the backbone run ONCE per call.

    For terms guided by the backbone's own classifier head, grad_x log p(y | x, sigma) comes from the same
    backbone forward that feeds the subnet its taps (one extra backward pass; no second forward). Strength,
    schedule, sigma window, temperature and norm scaling follow the term's GuideSettings exactly as in
    `GuidedDenoiser` (same `guidance_delta`). Any other guide (or one using randomized smoothing, which needs
    several passes) falls back to `guide_gradient`.
    """

    def __init__(self, model: SingleBackboneModel, terms: list[GuideTerm]) -> None:
        self.model = model
        self.terms = terms

    def shares_backbone(self, term: GuideTerm) -> bool:
        guide_model = getattr(term.guide, "model", None)
        return guide_model is self.model.backbone and term.guide.reads_x_t(term.settings) and term.settings.smoothing <= 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = per_sample_sigma(sigma, x)
        active = active_terms(self.terms, sigma, x.dtype)
        shared = [(t, s) for t, s in active if self.shares_backbone(t)]
        x_leaf, out = self.model.backbone_graph(x, sigma)
        grads = []
        with torch.enable_grad():
            for term, _ in shared:  # grad_x log p(y | x, sigma) through the head, on the same graph
                temperature = term.settings.temperature_at(sigma).to(x.dtype).view(-1, 1)
                logp = torch.log_softmax(out.logits / temperature, dim=1).gather(1, term.target.view(-1, 1).to(x.device))
                (g,) = torch.autograd.grad(logp.sum(), x_leaf, retain_graph=True)
                grads.append(g)
        taps = self.model.taps_from(out)
        with torch.no_grad():
            denoised = self.model.denoise(x, sigma, taps)
            if not active:
                return denoised
            total = torch.zeros_like(denoised)
            for (term, strength), grad in zip(shared, grads):
                total += term.weight * guidance_delta(term.settings, strength, grad, x, sigma, denoised)
        for term, strength in active:
            if not self.shares_backbone(term):
                grad, _ = guide_gradient(term, x, sigma, denoised)
                total += term.weight * guidance_delta(term.settings, strength, grad, x, sigma, denoised)
        return denoised + total.detach()
