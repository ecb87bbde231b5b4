"""Euler and Heun samplers for the EDM ODE, optionally stochastic (churn), driven one step at a time.

The per-step state is an explicit value (`SamplerState`), so whoever owns the loop (a Python for
loop, a Serve ingress that batches many requests) can advance it step by step. `step_calls`
is the step written as a generator: it yields every (x, sigma) it needs denoised and receives
x0_hat back, so an async caller can send each denoiser call to a remote deployment. The
comments follow Algorithm 2 of Karras et al. 2022.

Every step checks that x stayed finite and raises `NonFiniteError` (with the step index and sigma)
when it did not: once NaN, a sample stays NaN to the end, and written out it is silent garbage.
Callers that score whole batches and want to keep the finite rows pass `allow_nonfinite=True`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Generator, Literal

import torch

from guidance.diffusion.precond import Denoiser
from guidance.diffusion.schedule import RHO, SIGMA_MAX, SIGMA_MIN, karras_sigmas
from guidance.finite import NonFiniteError, nonfinite_count, nonfinite_rows

DenoiseCall = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    """How to integrate: schedule, solver and stochasticity (S_churn etc. as in EDM)."""

    steps: int = 18
    kind: Literal["euler", "heun"] = "heun"
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO
    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("euler", "heun"):
            raise ValueError(f"sampler kind must be 'euler' or 'heun', got {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.churn < 0:
            raise ValueError(f"churn must be non-negative, got {self.churn}")

    def sigmas(self) -> torch.Tensor:
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)


@dataclass(frozen=True)
class SamplerState:
    """Everything needed to take the next step: the current sample, where we are, and the seed
    that makes stochastic steps reproducible regardless of how steps are interleaved."""

    x: torch.Tensor
    index: int
    sigmas: torch.Tensor = field(repr=False)
    seed: int = 0

    @property
    def done(self) -> bool:
        return self.index >= len(self.sigmas) - 1

    @property
    def sigma(self) -> float:
        return float(self.sigmas[self.index])


def init_state(noise: torch.Tensor, config: SamplerConfig, seed: int = 0) -> SamplerState:
    """Start from unit Gaussian `noise` scaled to the first sigma."""
    sigmas = config.sigmas().to(noise.device)
    return SamplerState(x=noise * sigmas[0], index=0, sigmas=sigmas, seed=seed)


def _step_noise(state: SamplerState) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(state.seed * 1_000_003 + state.index)
    return torch.randn(state.x.shape, generator=gen).to(state.x.device, state.x.dtype)


def check_step(state: SamplerState, x_next: torch.Tensor) -> None:
    """Raise NonFiniteError when the step from `state` produced a non-finite `x_next`: which step
    (0-based index), the sigma it started from, and how many samples and values went bad."""
    count = nonfinite_count(x_next)
    if not count:
        return
    rows, steps = int(nonfinite_rows(x_next).sum()), len(state.sigmas) - 1
    raise NonFiniteError(
        f"sampling became non-finite at step index {state.index} of {steps} (sigma {state.sigma:.4g}): "
        f"{rows} of {len(x_next)} sample(s), {count} value(s) NaN or inf",
        what="x", count=count, total=x_next.numel(), step=state.index, sigma=state.sigma,
    )


def step_calls(
    state: SamplerState, config: SamplerConfig, allow_nonfinite: bool = False
) -> Generator[DenoiseCall, torch.Tensor, SamplerState]:
    """One sampler step as a generator of denoiser calls; returns the next state (checked finite
    unless `allow_nonfinite`)."""
    if state.done:
        raise ValueError("sampler state is already at the last step")
    i, x, n = state.index, state.x, len(state.sigmas) - 1
    t_cur, t_next = state.sigmas[i], state.sigmas[i + 1]
    # Increase noise temporarily (churn): gamma_i = min(S_churn / N, sqrt(2) - 1) inside [S_tmin, S_tmax].
    gamma = min(config.churn / n, math.sqrt(2) - 1) if config.s_tmin <= float(t_cur) <= config.s_tmax else 0.0
    t_hat = t_cur * (1 + gamma)
    if gamma > 0:
        x = x + (t_hat**2 - t_cur**2).sqrt() * config.s_noise * _step_noise(state)
    batch = x.shape[0]
    # Euler step from t_hat to t_next.
    denoised = yield x, t_hat.expand(batch)
    d_cur = (x - denoised) / t_hat
    x_next = x + (t_next - t_hat) * d_cur
    # Second-order (Heun) correction, except on the last step to sigma = 0.
    if config.kind == "heun" and float(t_next) > 0:
        denoised_next = yield x_next, t_next.expand(batch)
        d_prime = (x_next - denoised_next) / t_next
        x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    if not allow_nonfinite:
        check_step(state, x_next)
    return replace(state, x=x_next, index=i + 1)


def sampler_step(denoiser: Denoiser, state: SamplerState, config: SamplerConfig, allow_nonfinite: bool = False) -> SamplerState:
    """Advance one step, calling `denoiser` in-process (see `step_calls` for `allow_nonfinite`)."""
    gen = step_calls(state, config, allow_nonfinite)
    call = next(gen)
    while True:
        try:
            call = gen.send(denoiser(*call))
        except StopIteration as stop:
            return stop.value


def sample(
    denoiser: Denoiser,
    noise: torch.Tensor,
    config: SamplerConfig,
    seed: int = 0,
    callback: Callable[[SamplerState], None] | None = None,
    allow_nonfinite: bool = False,
) -> torch.Tensor:
    """Integrate from `noise` (unit Gaussian) to a sample; `callback` sees every intermediate state."""
    state = init_state(noise, config, seed)
    while not state.done:
        state = sampler_step(denoiser, state, config, allow_nonfinite)
        if callback is not None:
            callback(state)
    return state.x
