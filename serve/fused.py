"""The fused step for single-backbone generators (ScoreSubnet): score and guide from one backbone pass.

What the `Fused` deployment runs on the calls one batch merged, without Ray, so tests can compare it
with the in-process `GuidedSingleBackbone` directly. Every call is one request's denoiser call at one
sampler step: its rows `x` at their own `sigma`, and, when the request is guided, its target classes
and guide settings. One backbone forward (with autograd) covers every row of every call; the guided
rows' grad log p(y | x, sigma) comes from that forward's logits (one backward for all of them), the
subnet's taps from the same forward, and each call gets back D + its guidance delta, term for term as
`GuidedSingleBackbone` computes it. Unguided calls (scale 0) ride in the same batch and get plain D.

Guide settings the shared pass cannot serve (randomized smoothing, or input=x0_hat) fall back to the
guide's own gradient per call, as `GuidedSingleBackbone` does for such terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

import numpy as np
import torch

from guidance.guides import ClassifierGuide, GuideTerm, guide_gradient
from guidance.guides.base import guidance_delta
from guidance.models.score_subnet import SingleBackboneModel
from serve.steps import GuidePlan, StepStats, from_wire, settings_from_json, to_wire


@dataclass(frozen=True)
class FusedCall:
    """One request's guided denoiser call at one step (what the fused deployment receives)."""

    x: np.ndarray  # (n, 1, M, T)
    sigma: np.ndarray  # (n,)
    target: Optional[np.ndarray] = None  # (n,) int64 class indices; None: unguided
    settings_json: Optional[str] = None  # GuideSettings as JSON; None: unguided


@dataclass(frozen=True)
class FusedResult:
    denoised: np.ndarray  # guided x0_hat: D(x, sigma) + guidance delta, (n, 1, M, T)
    prob: Optional[np.ndarray] = None  # (n,) target probability at this step (guided calls with an active guide)
    guided: bool = False  # whether a guidance delta was applied (some row had non-zero strength)


def _shares_backbone(guide: ClassifierGuide, settings) -> bool:
    """The condition of `GuidedSingleBackbone.shares_backbone`, for the backbone's own guide."""
    return guide.reads_x_t(settings) and settings.smoothing <= 0


def fused_batch(model: SingleBackboneModel, guide: ClassifierGuide, calls: list[FusedCall], device: torch.device) -> list[FusedResult]:
    """Guided D for every call with ONE backbone forward over all their rows.

    Rows do not interact in the eval-mode backbone and subnet (per-sample normalisation, no dropout),
    so the gradient of the summed log-likelihood over the guided rows is each row's own gradient, and
    each row's taps are what it would get alone.
    """
    sizes = [len(c.x) for c in calls]
    x = torch.cat([from_wire(c.x) for c in calls]).to(device)
    sigma = torch.cat([from_wire(c.sigma).reshape(-1) for c in calls]).to(device=device, dtype=x.dtype)
    starts = np.cumsum([0, *sizes])
    settings = [settings_from_json(c.settings_json) if c.settings_json is not None and c.target is not None else None for c in calls]
    strengths: list[Optional[torch.Tensor]] = []
    for s, a, b in zip(settings, starts[:-1], starts[1:]):
        k = s.strength(sigma[a:b]).to(x.dtype) if s is not None else None
        strengths.append(k if k is not None and bool((k > 0).any()) else None)
    shared = [i for i, (s, k) in enumerate(zip(settings, strengths)) if k is not None and _shares_backbone(guide, s)]

    x_leaf, out = model.backbone_graph(x, sigma)
    grad = logp = None
    if shared:
        rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in shared]).to(device)
        temperature = torch.cat([settings[i].temperature_at(sigma[starts[i] : starts[i + 1]]) for i in shared]).to(x.dtype)
        target = torch.cat([from_wire(calls[i].target).reshape(-1) for i in shared]).to(device)
        with torch.enable_grad():
            logits = out.logits[rows] / temperature.view(-1, 1)
            logp = torch.log_softmax(logits, dim=1).gather(1, target.view(-1, 1)).squeeze(1)
            (grad,) = torch.autograd.grad(logp.sum(), x_leaf, retain_graph=True)
        logp = logp.detach()
    taps = model.taps_from(out)
    with torch.no_grad():
        denoised = model.denoise(x, sigma, taps)

    results: list[FusedResult] = []
    row_of_shared = {i: n for n, i in enumerate(shared)}
    offset_in_shared = np.cumsum([0, *(sizes[i] for i in shared)])
    for i, (call, s, k) in enumerate(zip(calls, settings, strengths)):
        a, b = int(starts[i]), int(starts[i + 1])
        d, xi, si = denoised[a:b], x[a:b], sigma[a:b]
        if k is None:
            results.append(FusedResult(to_wire(d.float().cpu())))
            continue
        if i in row_of_shared:
            n = row_of_shared[i]
            g, lp = grad[a:b], logp[offset_in_shared[n] : offset_in_shared[n + 1]]
        else:  # a guide setting the shared pass cannot serve: the guide's own gradient, as in-process
            target = from_wire(call.target).reshape(-1).to(device)
            g, lp = guide_gradient(GuideTerm(guide, target, s), xi, si, d)
        with torch.no_grad():
            total = torch.zeros_like(d) + guidance_delta(s, k, g, xi, si, d)
            out_rows = d + total
        results.append(FusedResult(to_wire(out_rows.float().cpu()), to_wire(lp.exp().float().cpu()), True))
    return results


FusedStep = Callable[[FusedCall], Awaitable[FusedResult]]


def fused_denoiser(plan: Optional[GuidePlan], step: FusedStep, stats: StepStats) -> Callable[[torch.Tensor, torch.Tensor], Awaitable[torch.Tensor]]:
    """The guided denoiser D_y(x, sigma) of one request as ONE call per sampler evaluation.

    `drive_sampler` is given this as its denoiser and no guide plan: the fused deployment returns the
    guided x0_hat itself. `stats` counts the calls that were guided and keeps the last guide probability.
    """
    target = to_wire(plan.target) if plan is not None else None
    settings_json = plan.settings.model_dump_json() if plan is not None else None

    async def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
        result = await step(FusedCall(to_wire(x), to_wire(sigma), target, settings_json))
        if result.guided:
            stats.guide_calls += 1
            stats.last_guide_prob = result.prob
        return from_wire(result.denoised).to(x.dtype)

    return denoise
