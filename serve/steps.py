"""The split sampler without Ray: per-request step driver and the batched math of each deployment.

`drive_sampler` owns one request's `SamplerState` and advances it with
`guidance.diffusion.samplers.step_calls`; every denoiser call it needs goes to an async
`denoise(x, sigma)` and every guide gradient to an async `guide(call)`. In the Serve app those
are deployment handles; in tests they are local functions, so the remote topology is checked
against the in-process `GuidedDenoiser` without a cluster. `denoise_batch` and
`guide_batch` are what the deployments run on the requests one `@serve.batch` call merged.

Arrays that cross process boundaries are contiguous float32/int64 numpy arrays (cheap to
serialise, no torch pickling).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Awaitable, Callable, Optional

import numpy as np
import torch

from guidance.diffusion.samplers import SamplerConfig, init_state, step_calls
from guidance.guides import ClassifierGuide, GuideSettings, GuideTerm, guide_gradient
from guidance.guides.base import guidance_delta


def to_wire(t: torch.Tensor) -> np.ndarray:
    """A tensor as the contiguous numpy array sent between deployments."""
    return np.ascontiguousarray(t.detach().cpu().numpy())


def from_wire(a: np.ndarray) -> torch.Tensor:
    # Arrays arriving through Ray's object store are read-only views; torch needs a writable copy
    # only when it would write, which it never does here, so wrap without copying when possible.
    return torch.from_numpy(a if a.flags.writeable else a.copy())


@dataclass(frozen=True)
class GuideCall:
    """One request's guide evaluation at one denoiser call (what the classifier deployment receives)."""

    kind: str  # "noisy" | "clean": which classifier
    inp: np.ndarray  # what the guide reads: x_t (noise-conditioned, or input=x_t) or x0_hat, (n, 1, M, T)
    sigma: np.ndarray  # (n,)
    target: np.ndarray  # (n,) int64 class indices
    settings_json: str  # GuideSettings as JSON (temperature schedule, smoothing)


@dataclass(frozen=True)
class GuideResult:
    grad: np.ndarray  # d log p(y | inp, sigma) / d inp, (n, 1, M, T)
    log_prob: np.ndarray  # (n,) at the per-sigma temperature
    prob: np.ndarray  # (n,) target probability exp(log_prob)


@lru_cache(maxsize=256)
def settings_from_json(text: str) -> GuideSettings:
    """Parsed settings, cached: the same few profiles arrive at every step of every request."""
    return GuideSettings.model_validate_json(text)


def denoise_batch(model: torch.nn.Module, items: list[tuple[np.ndarray, np.ndarray]], device: torch.device) -> list[np.ndarray]:
    """D(x, sigma) over the concatenation of every request's rows: one forward for the whole batch."""
    sizes = [len(x) for x, _ in items]
    x = torch.cat([from_wire(x) for x, _ in items]).to(device)
    sigma = torch.cat([from_wire(s).reshape(-1) for _, s in items]).to(device)
    with torch.no_grad():
        out = model(x, sigma).float().cpu()
    return [to_wire(part) for part in torch.split(out, sizes)]


def guide_batch(guides: dict[str, ClassifierGuide], calls: list[GuideCall], device: torch.device) -> list[GuideResult]:
    """Gradients of log p(y | input, sigma) for many requests with few forward/backward passes.

    Calls that read the same classifier merge into one pass: each row keeps its own sigma, target
    and temperature, and rows do not interact in an eval-mode classifier, so the gradient of the
    summed log-likelihood is every row's own gradient. Randomized smoothing draws its noise for the
    whole input tensor, so smoothed calls run one by one to get exactly the in-process result.
    """
    results: list[Optional[GuideResult]] = [None] * len(calls)
    groups: dict[tuple, list[int]] = {}
    for i, call in enumerate(calls):
        s = settings_from_json(call.settings_json)
        key = (call.kind, i) if s.smoothing > 0 else (call.kind,)
        groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        guide = guides[key[0]]
        members = [calls[i] for i in idx]
        inp = torch.cat([from_wire(c.inp) for c in members]).to(device)
        sigma = torch.cat([from_wire(c.sigma).reshape(-1) for c in members]).to(device)
        target = torch.cat([from_wire(c.target).reshape(-1) for c in members]).to(device)
        settings = [settings_from_json(c.settings_json) for c in members]
        sizes = [len(c.inp) for c in members]
        temperature = torch.cat([s.temperature_at(sg) for s, sg in zip(settings, torch.split(sigma, sizes))])
        if settings[0].smoothing > 0:  # a group of one: the guide's own smoothed objective
            term = GuideTerm(guide, target, settings[0])
            grad, logp = guide_gradient(term, inp, sigma, inp)
        else:
            with torch.enable_grad():
                leaf = inp.detach().requires_grad_(True)
                logp = guide.log_prob(leaf, sigma, target, temperature)
                (grad,) = torch.autograd.grad(logp.sum(), leaf)
        logp = logp.detach().float().cpu()
        grad = grad.float().cpu()
        for i, g, lp in zip(idx, torch.split(grad, sizes), torch.split(logp, sizes)):
            results[i] = GuideResult(grad=to_wire(g), log_prob=to_wire(lp), prob=to_wire(lp.exp()))
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


@dataclass(frozen=True)
class GuidePlan:
    """How one request is guided: which classifier, its targets, settings, and what it reads."""

    kind: str
    target: torch.Tensor  # (n,) class indices
    settings: GuideSettings
    reads_x_t: bool  # noise-conditioned (or input=x_t): reads x_t and can run beside the denoiser
    weight: float = 1.0


@dataclass
class StepStats:
    """What one request's sampling cost: calls made and time spent waiting on each deployment."""

    denoiser_calls: int = 0
    guide_calls: int = 0
    steps: int = 0
    wait_ms: float = 0.0
    last_guide_prob: Optional[np.ndarray] = field(default=None, repr=False)


Denoise = Callable[[torch.Tensor, torch.Tensor], Awaitable[torch.Tensor]]
Guide = Callable[[GuideCall], Awaitable[GuideResult]]


async def guided_call(
    x: torch.Tensor, sigma: torch.Tensor, plan: Optional[GuidePlan], denoise: Denoise, guide: Guide, stats: StepStats
) -> torch.Tensor:
    """D_y(x, sigma) = D(x, sigma) + guidance, with D and the guide on their own deployments.

    Mirrors `GuidedDenoiser.__call__` term by term, so the split app samples what the in-process
    pipeline samples. A noise-conditioned guide reads x_t, so its call runs concurrently with the
    denoiser's; a clean guide reads x0_hat and has to wait for it. Outside the guide's sigma window
    no guide call is made at all.
    """
    sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
    strength = plan.settings.strength(sigma).to(x.dtype) if plan is not None else None
    stats.denoiser_calls += 1
    t0 = time.perf_counter()
    if plan is None or not bool((strength > 0).any()):
        denoised = await denoise(x, sigma)
        stats.wait_ms += (time.perf_counter() - t0) * 1e3
        return denoised
    stats.guide_calls += 1

    def call_for(inp: torch.Tensor) -> GuideCall:
        return GuideCall(plan.kind, to_wire(inp), to_wire(sigma), to_wire(plan.target), plan.settings.model_dump_json())

    if plan.reads_x_t:
        denoised, result = await asyncio.gather(denoise(x, sigma), guide(call_for(x)))
    else:
        denoised = await denoise(x, sigma)
        result = await guide(call_for(denoised))
    stats.wait_ms += (time.perf_counter() - t0) * 1e3
    stats.last_guide_prob = result.prob
    grad = from_wire(result.grad).to(x.device, x.dtype)
    total = torch.zeros_like(denoised)
    total = total + plan.weight * guidance_delta(plan.settings, strength, grad, x, sigma, denoised)
    return denoised + total


async def drive_sampler(
    noise: torch.Tensor, config: SamplerConfig, seed: int, plan: Optional[GuidePlan], denoise: Denoise, guide: Guide
) -> tuple[torch.Tensor, StepStats]:
    """Sample one request's batch step by step; the state lives here, one value per step.

    Raises NonFiniteError (with the step index and sigma) when x goes NaN/inf, as the in-process
    sampler does; the ingress answers it with a JSON 500."""
    stats = StepStats()
    state = init_state(noise, config, seed=seed)
    while not state.done:
        gen = step_calls(state, config)
        call = next(gen)
        while True:
            denoised = await guided_call(*call, plan, denoise, guide, stats)
            try:
                call = gen.send(denoised)
            except StopIteration as stop:
                state = stop.value
                break
        stats.steps += 1
    return state.x, stats
