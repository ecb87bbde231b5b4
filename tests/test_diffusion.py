"""EDM preconditioning and samplers on a Gaussian toy whose exact denoiser is known.

For data x0 ~ N(mu, s^2) (per element), the ideal denoiser is
    D*(x, sigma) = mu + s^2 / (s^2 + sigma^2) * (x - mu),
so a correct sampler must turn unit noise into samples with mean mu and variance s^2.
"""

from __future__ import annotations

import math

import pytest
import torch

from guidance.diffusion import EDMLoss, EDMPrecond, SamplerConfig, init_state, karras_sigmas, sample, sampler_step
from guidance.diffusion.precond import edm_coefficients
from guidance.diffusion.samplers import step_calls

MU, S = 1.5, 0.5


def exact_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, 1, 1, 1).to(x.dtype)
    return MU + S**2 / (S**2 + s**2) * (x - MU)


class ExactF(torch.nn.Module):
    """The raw network F that EDMPrecond must combine into exactly D*: F = (D* - c_skip x) / c_out."""

    def __init__(self, sigma_data: float) -> None:
        super().__init__()
        self.sigma_data = sigma_data

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        sigma = (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = (c.view(-1, 1, 1, 1) for c in edm_coefficients(sigma, self.sigma_data))
        x = x_in / c_in
        return (exact_denoiser(x, sigma) - c_skip * x) / c_out


def test_karras_sigmas_endpoints_and_order():
    s = karras_sigmas(10, 0.002, 80.0, 7.0)
    assert len(s) == 11 and s[-1] == 0
    assert math.isclose(float(s[0]), 80.0, rel_tol=1e-5) and math.isclose(float(s[-2]), 0.002, rel_tol=1e-4)
    assert bool((s[:-1][1:] < s[:-1][:-1]).all())


def test_precond_reproduces_exact_denoiser():
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 1.0, 7.0, 60.0], dtype=torch.float64)
    d = EDMPrecond(ExactF(sigma_data=0.7), sigma_data=0.7)(x, sigma)
    torch.testing.assert_close(d, exact_denoiser(x, sigma))


@pytest.mark.parametrize(
    "kind,steps,churn", [("heun", 100, 0.0), ("euler", 400, 0.0), ("heun", 100, 20.0)]
)
def test_sampler_recovers_gaussian_mean_and_variance(kind, steps, churn):
    cfg = SamplerConfig(steps=steps, kind=kind, churn=churn, sigma_max=80.0)
    denoiser = EDMPrecond(ExactF(sigma_data=1.0), sigma_data=1.0).double()
    noise = torch.randn(4000, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = sample(denoiser, noise, cfg, seed=3)
    assert abs(x.mean().item() - MU) < 0.02
    assert abs(x.var().item() - S**2) / S**2 < 0.03


def test_heun_converges_faster_than_euler():
    noise = torch.randn(2000, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    err = {
        kind: abs(sample(exact_denoiser, noise, SamplerConfig(steps=30, kind=kind)).var().item() - S**2)
        for kind in ("euler", "heun")
    }
    assert err["heun"] < err["euler"]


def test_sampler_with_wrong_denoiser_misses_the_variance():
    """The toy test can fail: a denoiser that believes the data are wider gives wider samples."""
    cfg = SamplerConfig(steps=18)

    def wrong(x, sigma):
        s = sigma.view(-1, 1, 1, 1)
        return MU + (2 * S) ** 2 / ((2 * S) ** 2 + s**2) * (x - MU)

    x = sample(wrong, torch.randn(2000, 1, 4, 4, dtype=torch.float64), cfg)
    assert abs(x.var().item() - S**2) / S**2 > 0.5


def test_stepping_from_outside_equals_sample_and_is_explicit():
    cfg = SamplerConfig(steps=6, churn=5.0)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = sample(exact_denoiser, noise, cfg, seed=7)
    state = init_state(noise, cfg, seed=7)
    calls = 0
    while not state.done:
        gen = step_calls(state, cfg)
        request = next(gen)
        while True:
            calls += 1
            try:
                request = gen.send(exact_denoiser(*request))
            except StopIteration as stop:
                state = stop.value
                break
    torch.testing.assert_close(state.x, whole)
    assert calls == 2 * 6 - 1  # Heun: two calls per step except the last
    with pytest.raises(ValueError):
        sampler_step(exact_denoiser, state, cfg)


def test_edm_loss_trains_a_network_to_the_gaussian():
    """DSM with EDM's loss and preconditioning learns the toy distribution (a real, small training run)."""
    torch.manual_seed(0)

    class Affine(torch.nn.Module):
        # F(x_in, c_noise) = a(c_noise) * x_in + b(c_noise): expressive enough for a Gaussian.
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

        def forward(self, x_in, c_noise):
            a, b = self.net(c_noise.view(-1, 1)).unbind(1)
            return a.view(-1, 1, 1, 1) * x_in + b.view(-1, 1, 1, 1)

    model = EDMPrecond(Affine(), sigma_data=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = EDMLoss(p_mean=0.0, p_std=2.0)
    for _ in range(800):
        y = MU + S * torch.randn(256, 1, 1, 4)
        loss = loss_fn(model, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = sample(model, torch.randn(4000, 1, 1, 4), SamplerConfig(steps=18))
    assert abs(x.mean().item() - MU) < 0.1
    assert abs(x.std().item() - S) < 0.1


def test_sampler_config_rejects_bad_values():
    with pytest.raises(ValueError):
        SamplerConfig(steps=0)
    with pytest.raises(ValueError):
        SamplerConfig(kind="ddim")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        karras_sigmas(5, 1.0, 0.5)
