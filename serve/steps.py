"""The split sampler without Ray: per-request step driver and the batched math of each deployment.

`drive_sampler` owns one request's `SamplerState` and advances it with
`guidance.diffusion.samplers.step_calls`; each denoiser evaluation is the engine's guided denoiser
(`guidance.guides.engine.guided_calls`), whose calls go to an async `denoise(x, sigma)` and an async
`guide(call)`, or to the fused deployment. In the Serve app those are deployment handles; in tests
they are local functions, so the remote topology is checked against the in-process `GuidedDenoiser`
without a cluster. `denoise_batch` and
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
from guidance.guide_host import RemoteGuide
from guidance.guides import Guide, GuideSettings, GuideTerm, guide_gradient
from guidance.guides.engine import Answer, Call, DenoiseCall, Denoised, Gradient, GuidedStep, guided_calls


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

    kind: str  # the hosted guide's key (`guidance.guide_host`: noisy, clean, speaker-stats, hf:NAME) or a registry model id
    inp: np.ndarray  # what the guide reads: x_t (noise-conditioned, or input=x_t) or x0_hat, (n, 1, M, T)
    sigma: np.ndarray  # (n,)
    target: np.ndarray  # (n,) int64 class indices (a reference guide: rows of `references`)
    settings_json: str  # GuideSettings as JSON (temperature schedule, smoothing)
    references: Optional[np.ndarray] = None  # the guide's request table (`Guide.request_table`: voice references, pitch lines), (R, ...) float32


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


def guide_batch(guides: dict[str, Guide], calls: list[GuideCall], device: torch.device) -> list[GuideResult]:
    """Gradients of log p(y | input, sigma) for many requests with few forward/backward passes.

    Calls that read the same guide merge into one pass: each row keeps its own sigma, target and
    temperature, and rows do not interact in an eval-mode guide, so the gradient of the summed
    log-likelihood is every row's own gradient. Calls of a guide with a request table (voice references,
    pitch target lines) bring their request's: merged, the tables are stacked and each call's targets
    shifted to its own rows.
    Randomized smoothing draws its noise for the whole input tensor, so smoothed calls run one by one
    to get exactly the in-process result. Nothing here depends on the guide's kind.
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
        targets = [from_wire(c.target).reshape(-1) for c in members]
        if members[0].references is not None:  # one table for the group, each call's targets on its own rows
            tables = [from_wire(c.references) for c in members]
            shift = np.cumsum([0, *(len(t) for t in tables)])
            targets = [t + int(k) for t, k in zip(targets, shift)]
            guide = guide.with_request_table(torch.cat(tables).to(device))
        target = torch.cat(targets).to(device)
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
    """One hosted guide's term in short: its key, targets, settings and what it reads (what the step-level
    tests build; the ingress plans whole requests with `guidance.plan` and passes their terms)."""

    kind: str
    target: torch.Tensor  # (n,) class indices
    settings: GuideSettings
    reads_x_t: bool  # noise-conditioned (or input=x_t): reads x_t and can run beside the denoiser
    weight: float = 1.0

    def terms(self) -> list[GuideTerm]:
        """The plan as the engine's guide terms (the guide itself lives on a deployment)."""
        return [GuideTerm(RemoteGuide(self.kind, [], self.reads_x_t), self.target, self.settings, self.weight)]


@dataclass
class StepStats:
    """What one request's sampling cost: calls made and time spent waiting on each deployment."""

    denoiser_calls: int = 0
    guide_calls: int = 0
    steps: int = 0
    wait_ms: float = 0.0
    last_guide_prob: Optional[np.ndarray] = field(default=None, repr=False)


Denoise = Callable[[torch.Tensor, torch.Tensor], Awaitable[torch.Tensor]]
GuideHandle = Callable[[GuideCall], Awaitable[GuideResult]]
Answerer = Callable[[list[Call]], Awaitable[list[Answer]]]


def guide_call(call: Call) -> GuideCall:
    """The engine's gradient call as the classifier deployment receives it."""
    t = call.term
    refs = t.guide.request_table()  # a request's table (voice references, pitch lines) travels with the call
    return GuideCall(
        t.guide.name, to_wire(call.inp), to_wire(call.sigma), to_wire(t.target), t.settings.model_dump_json(),
        to_wire(refs.float()) if refs is not None else None,
    )


def split_answerer(denoise: Denoise, guide: Optional[GuideHandle]) -> Answerer:
    """Answers the engine's calls with the denoiser and classifier deployments, each call concurrently
    with the others of its batch (a guide that reads x_t runs beside the denoiser)."""

    async def one(call: Call) -> Answer:
        if isinstance(call, DenoiseCall):
            return Denoised(await denoise(call.x, call.sigma))
        assert guide is not None, "a guided request needs the guide deployment"
        result = await guide(guide_call(call))
        return Gradient(from_wire(result.grad), from_wire(result.log_prob))

    async def answer(calls: list[Call]) -> list[Answer]:
        return list(await asyncio.gather(*(one(c) for c in calls)))

    return answer


@dataclass(frozen=True)
class HostRound:
    """One request's calls of one engine round, for a model host that computes them all (`args.colocate`):
    its denoiser call, if the round has one, and its gradient calls."""

    denoise: Optional[tuple[np.ndarray, np.ndarray]]  # (x, sigma)
    guides: tuple[GuideCall, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.denoise[0]) if self.denoise is not None else sum(len(g.inp) for g in self.guides)


@dataclass(frozen=True)
class HostAnswer:
    denoised: Optional[np.ndarray]
    guides: tuple[GuideResult, ...] = ()


def host_round_batch(denoiser: torch.nn.Module, guides: dict[str, Guide], rounds: list[HostRound], device: torch.device) -> list[HostAnswer]:
    """Every waiting round's denoiser calls in one forward, then their gradient calls in merged passes."""
    with_d = [i for i, r in enumerate(rounds) if r.denoise is not None]
    denoised = dict(zip(with_d, denoise_batch(denoiser, [rounds[i].denoise for i in with_d], device))) if with_d else {}
    flat = [g for r in rounds for g in r.guides]
    results = iter(guide_batch(guides, flat, device) if flat else [])
    return [HostAnswer(denoised.get(i), tuple(next(results) for _ in r.guides)) for i, r in enumerate(rounds)]


def host_answerer(round_call: Callable[[HostRound], Awaitable[HostAnswer]]) -> Answerer:
    """Answers each round of the engine's calls with ONE call to a model host (denoiser and guides in one
    replica): a cohort's whole evaluation lands on one replica, so two replicas with two cohorts share
    the work evenly, which a Denoiser and a Classifier replica (the denoiser the busier) do not."""

    async def answer(calls: list[Call]) -> list[Answer]:
        den = [c for c in calls if isinstance(c, DenoiseCall)]
        if len(den) > 1:
            raise ValueError("a model host answers at most one denoiser call per round")
        grads = [c for c in calls if not isinstance(c, DenoiseCall)]
        result = await round_call(HostRound(
            (to_wire(den[0].x), to_wire(den[0].sigma)) if den else None, tuple(guide_call(c) for c in grads),
        ))
        answers = iter(Gradient(from_wire(g.grad), from_wire(g.log_prob)) for g in result.guides)
        return [Denoised(from_wire(result.denoised).to(c.x.dtype)) if isinstance(c, DenoiseCall) else next(answers) for c in calls]

    return answer


async def guided_call(x: torch.Tensor, sigma: torch.Tensor, terms: list[GuideTerm], answer: Answerer, stats: StepStats) -> torch.Tensor:
    """D_y(x, sigma) from the engine's `guided_calls`, every call answered remotely by `answer`."""
    step = GuidedStep()
    gen = guided_calls(terms, x, sigma, step)
    stats.denoiser_calls += 1
    t0 = time.perf_counter()
    calls = next(gen)
    while True:
        answers = await answer(calls)
        try:
            calls = gen.send(answers)
        except StopIteration as stop:
            out = stop.value
            break
    stats.wait_ms += (time.perf_counter() - t0) * 1e3
    if step.log_probs:
        stats.guide_calls += 1
        stats.last_guide_prob = to_wire(step.log_probs[min(step.log_probs)].exp().float())  # the first term (the digit guide when targeted)
    return out


async def drive_sampler(
    noise: torch.Tensor, config: SamplerConfig, seed: int, plan: "GuidePlan | list[GuideTerm] | None", denoise: Optional[Denoise],
    guide: Optional[GuideHandle], answer: Optional[Answerer] = None,
) -> tuple[torch.Tensor, StepStats]:
    """Sample one request's batch step by step; the state lives here, one value per step.

    `plan`: the request's guide terms (`guidance.plan.Plan.terms` over remote guides), or a one-guide
    `GuidePlan`, or None for unguided sampling.

    The engine's calls go to `answer` when given (e.g. the fused deployment), else to the denoiser and
    guide deployments. Raises NonFiniteError (with the step index and sigma) when x goes NaN/inf, as the
    in-process sampler does; the ingress answers it with a JSON 500."""
    stats = StepStats()
    terms = plan.terms() if isinstance(plan, GuidePlan) else list(plan or [])
    answer = answer or split_answerer(denoise, guide)
    state = init_state(noise, config, seed=seed)
    while not state.done:
        gen = step_calls(state, config)
        call = next(gen)
        while True:
            denoised = await guided_call(*call, terms, answer, stats)
            try:
                call = gen.send(denoised)
            except StopIteration as stop:
                state = stop.value
                break
        stats.steps += 1
    return state.x, stats
