"""The fused step for single-backbone generators (ScoreSubnet): D and the guide gradient from one backbone pass.

What the `Fused` deployment runs on the calls one batch merged, without Ray, so tests can compare it
with the in-process single-backbone provider (`guidance.guides.single_backbone`) directly. Every call is
one request's denoiser call at one sampler step: its rows `x` at their own `sigma`, and, when the
request's guide is active at this step, its target classes and guide settings. One backbone forward
(with autograd) covers every row of every call; the guided rows' grad log p(y | x, sigma) comes from that
forward's logits (one backward for all of them), the subnet's taps from the same forward. Each call gets
back D and, when asked, the gradient and log-likelihood: the ingress's engine combines them into D_y,
as it does for every other generator.

Guide settings the shared pass cannot serve (randomized smoothing) fall back to the guide's own gradient
per call, as the in-process provider does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

import numpy as np
import torch

from guidance.guides import ClassifierGuide, GuideTerm, guide_gradient
from guidance.guides.classifier import log_prob_from_logits
from guidance.guides.engine import Answer, Call, DenoiseCall, Denoised, Gradient, GradientCall
from guidance.models.score_subnet import SingleBackboneModel
from serve.steps import Answerer, from_wire, settings_from_json, to_wire


@dataclass(frozen=True)
class FusedCall:
    """One request's denoiser call at one step, with its guide gradient call when the guide is active."""

    x: np.ndarray  # (n, 1, M, T)
    sigma: np.ndarray  # (n,)
    target: Optional[np.ndarray] = None  # (n,) int64 class indices; None: no gradient asked
    settings_json: Optional[str] = None  # GuideSettings as JSON; None: no gradient asked


@dataclass(frozen=True)
class FusedResult:
    denoised: np.ndarray  # D(x, sigma), (n, 1, M, T)
    grad: Optional[np.ndarray] = None  # d log p(y | x, sigma) / dx, (n, 1, M, T), when asked
    log_prob: Optional[np.ndarray] = None  # (n,) at the per-sigma temperature, when asked


def fused_batch(model: SingleBackboneModel, guide: ClassifierGuide, calls: list[FusedCall], device: torch.device) -> list[FusedResult]:
    """D and the asked-for guide gradients for every call with ONE backbone forward over all their rows.

    Rows do not interact in the eval-mode backbone and subnet (per-sample normalisation, no dropout),
    so the gradient of the summed log-likelihood over the guided rows is each row's own gradient, and
    each row's taps are what it would get alone.
    """
    sizes = [len(c.x) for c in calls]
    x = torch.cat([from_wire(c.x) for c in calls]).to(device)
    sigma = torch.cat([from_wire(c.sigma).reshape(-1) for c in calls]).to(device=device, dtype=x.dtype)
    starts = np.cumsum([0, *sizes])
    settings = [settings_from_json(c.settings_json) if c.settings_json is not None and c.target is not None else None for c in calls]
    shared = [i for i, s in enumerate(settings) if s is not None and guide.reads_x_t(s) and s.smoothing <= 0]

    x_leaf, out = model.backbone_graph(x, sigma)
    grad = logp = None
    if shared:
        rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in shared]).to(device)
        temperature = torch.cat([settings[i].temperature_at(sigma[starts[i] : starts[i + 1]]) for i in shared])
        target = torch.cat([from_wire(calls[i].target).reshape(-1) for i in shared]).to(device)
        with torch.enable_grad():
            logp = log_prob_from_logits(out.logits[rows], target, temperature.to(x.dtype))
            (grad,) = torch.autograd.grad(logp.sum(), x_leaf, retain_graph=True)
        logp = logp.detach()
    taps = model.taps_from(out)
    with torch.no_grad():
        denoised = model.denoise(x, sigma, taps)

    results: list[FusedResult] = []
    row_of_shared = {i: n for n, i in enumerate(shared)}
    offset_in_shared = np.cumsum([0, *(sizes[i] for i in shared)])
    for i, (call, s) in enumerate(zip(calls, settings)):
        a, b = int(starts[i]), int(starts[i + 1])
        d = denoised[a:b]
        if s is None:
            results.append(FusedResult(to_wire(d.float().cpu())))
            continue
        if i in row_of_shared:
            n = row_of_shared[i]
            g, lp = grad[a:b], logp[offset_in_shared[n] : offset_in_shared[n + 1]]
        else:  # a guide setting the shared pass cannot serve: the guide's own gradient, as in-process
            target = from_wire(call.target).reshape(-1).to(device)
            g, lp = guide_gradient(GuideTerm(guide, target, s), x[a:b], sigma[a:b], d)
        results.append(FusedResult(to_wire(d.float().cpu()), to_wire(g.float().cpu()), to_wire(lp.float().cpu())))
    return results


FusedStep = Callable[[FusedCall], Awaitable[FusedResult]]


def fused_answerer(step: FusedStep) -> Answerer:
    """Answers the engine's calls of one evaluation with ONE call to the fused deployment.

    The backbone's guide is noise-conditioned, so its gradient call always reads x_t and arrives in the
    same batch as the denoiser call: both go out together and come back from one backbone pass."""

    async def answer(calls: list[Call]) -> list[Answer]:
        den = [c for c in calls if isinstance(c, DenoiseCall)]
        grads = [c for c in calls if isinstance(c, GradientCall)]
        if len(den) != 1 or len(grads) > 1 or any(c.reads != "x_t" for c in grads):
            raise ValueError("the fused generator answers one denoiser call and at most one x_t gradient call per evaluation")
        d = den[0]
        term = grads[0].term if grads else None
        result = await step(FusedCall(
            to_wire(d.x), to_wire(d.sigma),
            to_wire(term.target) if term is not None else None,
            term.settings.model_dump_json() if term is not None else None,
        ))
        denoised = Denoised(from_wire(result.denoised).to(d.x.dtype))
        if term is None:
            return [denoised]
        gradient = Gradient(from_wire(result.grad), from_wire(result.log_prob))
        return [denoised if isinstance(c, DenoiseCall) else gradient for c in calls]

    return answer
