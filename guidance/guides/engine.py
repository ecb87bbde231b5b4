"""The guided denoiser, written once: D_y(x, sigma) = D(x, sigma) + sum_k w_k * delta_k(x, sigma).

`guided_calls` is a generator of calls in the style of `step_calls`. It yields batches of calls, a
denoiser call and one gradient call per active guide term, each naming what it reads (x_t or x0_hat),
and is sent back one answer per call. It combines the answers with `guidance_delta`. Whoever drives it
decides where each call runs:

- `run_local(gen, provider)` answers in-process (CLI, evaluate, Tune). `LocalProvider` runs the
  denoiser and the guides' own gradients; a single-backbone model is another provider that answers a
  denoiser call and the gradient calls of its own head from ONE backbone pass
  (`guidance.models.score_subnet.SingleBackboneProvider`).
- The Serve ingress answers the same calls through deployment handles, merged across requests.

Calls in one batch do not depend on each other, so a driver may answer them concurrently: a guide that
reads x_t is asked beside the denoiser; one that reads x0_hat is asked in the next batch, once D is known.
A guide outside its sigma window costs no call at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generator, Protocol, Union

import torch

from guidance.guides.base import DenoiserGraph, GuideTerm, guidance_delta, guide_gradient


@dataclass(frozen=True)
class DenoiseCall:
    """D(x, sigma). `graph`: keep autograd's graph (a term differentiates through the denoiser)."""

    x: torch.Tensor
    sigma: torch.Tensor
    graph: bool = False


@dataclass(frozen=True)
class GradientCall:
    """grad log p_k(y_k | inp, sigma) with respect to x_t, for term `index` of the plan.

    `reads` is "x_t" (inp is x_t: noise-conditioned guides or input=x_t) or "x0_hat" (inp is D's output);
    `graph` is set when the gradient must flow through the denoiser (through_denoiser)."""

    index: int
    term: GuideTerm
    inp: torch.Tensor
    sigma: torch.Tensor
    reads: str
    x: torch.Tensor
    denoised: torch.Tensor | None = None
    graph: DenoiserGraph | None = None


@dataclass
class Denoised:
    """The answer to a DenoiseCall."""

    denoised: torch.Tensor
    graph: DenoiserGraph | None = None


@dataclass
class Gradient:
    """The answer to a GradientCall: the gradient wrt x_t and the (B,) log-likelihood at its temperature."""

    grad: torch.Tensor
    log_prob: torch.Tensor


Call = Union[DenoiseCall, GradientCall]
Answer = Union[Denoised, Gradient]


@dataclass
class GuidedStep:
    """What one guided denoiser evaluation produced besides D_y: each active term's log-likelihood."""

    log_probs: dict[int, torch.Tensor] = field(default_factory=dict)


def per_sample_sigma(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) sigmas in the sampler's own dtype: unlike score_subnet.per_sample_sigma (which casts to x's
    dtype for its network), the guidance delta keeps the sigma the sampler handed over, as before."""
    sigma = torch.as_tensor(sigma, device=x.device)
    return sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma.reshape(-1)


def guided_calls(
    terms: list[GuideTerm], x: torch.Tensor, sigma: torch.Tensor, step: GuidedStep | None = None
) -> Generator[list[Call], list[Answer], torch.Tensor]:
    """D_y(x, sigma) = D(x, sigma) + sum_k w_k * delta_k, as calls (the one place this formula lives).

    delta_k = strength_k(sigma) * sigma^2 * grad_x log p_k(y_k | .)            (plain)
    delta_k = strength_k(sigma) * ||D - x|| * grad / ||grad||                 (norm scaling, Guided-TTS)
    """
    sigma = per_sample_sigma(sigma, x)
    active = [(k, t, s) for k, t in enumerate(terms) for s in [t.settings.strength(sigma).to(x.dtype)] if bool((s > 0).any())]
    reads = {k: "x_t" if t.guide.reads_x_t(t.settings) else "x0_hat" for k, t, _ in active}
    through = any(t.settings.through_denoiser and reads[k] == "x0_hat" for k, t, _ in active)

    first: list[Call] = [DenoiseCall(x, sigma, graph=through)]
    first += [GradientCall(k, t, x, sigma, "x_t", x) for k, t, _ in active if reads[k] == "x_t"]
    answers = yield first
    den = answers[0]
    assert isinstance(den, Denoised)
    denoised = den.denoised
    if not active:
        return denoised
    grads: dict[int, Gradient] = {call.index: a for call, a in zip(first[1:], answers[1:])}  # type: ignore[union-attr]

    second: list[Call] = [
        GradientCall(k, t, denoised, sigma, "x0_hat", x, denoised, den.graph if t.settings.through_denoiser else None)
        for k, t, _ in active
        if reads[k] == "x0_hat"
    ]
    if second:
        answers = yield second
        grads.update({call.index: a for call, a in zip(second, answers)})  # type: ignore[union-attr]

    total = torch.zeros_like(denoised)
    for k, t, strength in active:
        g = grads[k]
        total = total + t.weight * guidance_delta(t.settings, strength, g.grad.to(x.device, x.dtype), x, sigma, denoised)
        if step is not None:
            step.log_probs[k] = g.log_prob
    return denoised + total.detach()


class Provider(Protocol):
    """Answers a batch of calls in-process, one answer per call in order."""

    def answer(self, calls: list[Call]) -> list[Answer]: ...


def answer_gradient(call: GradientCall) -> Gradient:
    """A gradient call answered by the term's own guide (also the fallback of every other provider)."""
    grad, logp = guide_gradient(call.term, call.x, call.sigma, call.denoised if call.denoised is not None else call.x, call.graph)
    return Gradient(grad, logp)


class LocalProvider:
    """The denoiser and each guide's own gradient, in this process."""

    def __init__(self, denoiser) -> None:
        self.denoiser = denoiser

    def answer(self, calls: list[Call]) -> list[Answer]:
        return [self.denoise(c) if isinstance(c, DenoiseCall) else answer_gradient(c) for c in calls]

    def denoise(self, call: DenoiseCall) -> Denoised:
        if call.graph:
            with torch.enable_grad():
                x_req = call.x.detach().requires_grad_(True)
                graph = DenoiserGraph(x_req, self.denoiser(x_req, call.sigma))
            return Denoised(graph.denoised.detach(), graph)
        with torch.no_grad():
            return Denoised(self.denoiser(call.x, call.sigma))


def run_local(gen: Generator[list[Call], list[Answer], torch.Tensor], provider: Provider) -> torch.Tensor:
    """Drive a guided denoiser evaluation to its end, answering every batch with `provider`."""
    calls = next(gen)
    while True:
        try:
            calls = gen.send(provider.answer(calls))
        except StopIteration as stop:
            return stop.value


class GuidedDenoiser:
    """The in-process driver as a denoiser: D_y(x, sigma) with the D(x, sigma) contract, so samplers
    never know guidance exists (as in k-diffusion's classifier-guidance wrapper)."""

    def __init__(self, denoiser, terms: list[GuideTerm], provider: Provider | None = None) -> None:
        self.denoiser = denoiser
        self.terms = terms
        self.provider = provider or LocalProvider(denoiser)
        self.last = GuidedStep()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.last = GuidedStep()
        return run_local(guided_calls(self.terms, x, sigma, self.last), self.provider)
