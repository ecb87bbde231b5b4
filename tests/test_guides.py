"""Each guide's gradient matches finite differences; the guided denoiser applies profiles as documented."""

from __future__ import annotations

import math

import pytest
import torch

from guidance.diffusion import EDMPrecond
from guidance.guides import ClassifierGuide, GuidanceProfile, GuidedDenoiser, GuideSettings, GuideTerm, guide_gradient
from guidance.guides.base import DenoiserGraph
from guidance.models import ClassifierConfig, LogMelClassifier, UNet, UNetConfig

LABELS = [str(d) for d in range(10)]


def _classifier(noisy: bool) -> LogMelClassifier:
    torch.manual_seed(1 if noisy else 2)
    return LogMelClassifier(ClassifierConfig(channels=(4, 8), emb_dim=8, noise_conditioned=noisy, dropout=0.0)).double().eval()


def _denoiser() -> EDMPrecond:
    torch.manual_seed(3)
    d = EDMPrecond(UNet(UNetConfig(channels=(4, 8), emb_dim=8))).double().eval()
    with torch.no_grad():  # the zero-initialised output layer would make D trivially linear
        for p in d.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return d


def _finite_difference(f, x: torch.Tensor, direction: torch.Tensor, eps: float = 1e-6) -> float:
    with torch.no_grad():
        return float((f(x + eps * direction) - f(x - eps * direction)) / (2 * eps))


SHAPE = (2, 1, 8, 8)


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 2
    sigma = torch.tensor([0.7, 2.0], dtype=torch.float64)
    target = torch.tensor([3, 8])
    direction = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return x, sigma, target, direction


@pytest.mark.parametrize(
    "noisy,settings",
    [
        (True, GuideSettings()),
        (True, GuideSettings(temperature=2.5)),
        (False, GuideSettings(input="x_t")),
        (False, GuideSettings(input="x0_hat", temperature_sigma_edges=[0.0, 1.0, 100.0], temperatures=[0.5, 3.0])),
        (False, GuideSettings(input="x0_hat", through_denoiser=True)),
        (False, GuideSettings(input="x0_hat", smoothing=0.3, smoothing_samples=3)),
    ],
)
def test_guide_gradient_matches_finite_differences(noisy, settings):
    guide = ClassifierGuide(_classifier(noisy), LABELS)
    denoiser = _denoiser()
    x, sigma, target, direction = _inputs()
    term = GuideTerm(guide, target, settings)
    temperature = settings.temperature_at(sigma)

    if settings.smoothing:
        noise = torch.randn((settings.smoothing_samples, *SHAPE), generator=torch.Generator().manual_seed(0)).double()

        def objective(z):
            batch = (z.unsqueeze(0) + settings.smoothing * noise).flatten(0, 1)
            k = settings.smoothing_samples
            return guide.log_prob(batch, sigma.repeat(k), target.repeat(k), temperature.repeat(k)).sum() / k

        x0 = denoiser(x, sigma).detach()
        grad, _ = guide_gradient(term, x, sigma, x0)
        point = x0
    elif guide.reads_x_t(settings):
        objective = lambda z: guide.log_prob(z, sigma, target, temperature).sum()  # noqa: E731
        grad, _ = guide_gradient(term, x, sigma, denoiser(x, sigma).detach())
        point = x
    elif settings.through_denoiser:
        objective = lambda z: guide.log_prob(denoiser(z, sigma), sigma, target, temperature).sum()  # noqa: E731
        x_req = x.clone().requires_grad_(True)
        graph = DenoiserGraph(x_req, denoiser(x_req, sigma))
        grad, _ = guide_gradient(term, x, sigma, graph.denoised.detach(), graph)
        point = x
    else:  # gradient with respect to x0_hat itself (the identity approximation of dx0/dx_t)
        x0 = denoiser(x, sigma).detach()
        objective = lambda z: guide.log_prob(z, sigma, target, temperature).sum()  # noqa: E731
        grad, _ = guide_gradient(term, x, sigma, x0)
        point = x0
    numeric = _finite_difference(objective, point, direction)
    analytic = float((grad * direction).sum())
    assert math.isclose(analytic, numeric, rel_tol=1e-5, abs_tol=1e-8), (analytic, numeric)


def test_through_denoiser_gradient_differs_from_identity_approximation():
    guide = ClassifierGuide(_classifier(False), LABELS)
    denoiser = _denoiser()
    x, sigma, target, _ = _inputs()
    x_req = x.clone().requires_grad_(True)
    graph = DenoiserGraph(x_req, denoiser(x_req, sigma))
    exact, _ = guide_gradient(GuideTerm(guide, target, GuideSettings(through_denoiser=True)), x, sigma, graph.denoised.detach(), graph)
    approx, _ = guide_gradient(GuideTerm(guide, target, GuideSettings()), x, sigma, graph.denoised.detach())
    assert not torch.allclose(exact, approx)


def test_guided_denoiser_adds_sigma_squared_scaled_gradient():
    guide = ClassifierGuide(_classifier(True), LABELS)
    denoiser = _denoiser()
    x, sigma, target, _ = _inputs()
    settings = GuideSettings(scale=2.0)
    guided = GuidedDenoiser(denoiser, [GuideTerm(guide, target, settings)])
    grad, _ = guide_gradient(GuideTerm(guide, target, settings), x, sigma, denoiser(x, sigma))
    expected = denoiser(x, sigma) + 2.0 * sigma.view(-1, 1, 1, 1) ** 2 * grad
    torch.testing.assert_close(guided(x, sigma), expected.detach())


def test_norm_scaling_sets_guidance_norm_to_fraction_of_denoiser_step():
    guide = ClassifierGuide(_classifier(False), LABELS)
    denoiser = _denoiser()
    x, sigma, target, _ = _inputs()
    guided = GuidedDenoiser(denoiser, [GuideTerm(guide, target, GuideSettings(scale=0.3, norm_scaling=True))])
    d = denoiser(x, sigma).detach()
    delta = (guided(x, sigma) - d).flatten(1).norm(dim=1)
    step = (d - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(delta, 0.3 * step)


def test_sigma_window_and_zero_scale_leave_the_denoiser_alone():
    guide = ClassifierGuide(_classifier(True), LABELS)
    denoiser = _denoiser()
    x, sigma, target, _ = _inputs()
    outside = GuidedDenoiser(denoiser, [GuideTerm(guide, target, GuideSettings(scale=5.0, sigma_lo=3.0, sigma_hi=10.0))])
    zero = GuidedDenoiser(denoiser, [GuideTerm(guide, target, GuideSettings(scale=0.0))])
    torch.testing.assert_close(outside(x, sigma), denoiser(x, sigma).detach())
    torch.testing.assert_close(zero(x, sigma), denoiser(x, sigma).detach())


def test_composite_is_the_weighted_sum_of_its_guides():
    g1, g2 = ClassifierGuide(_classifier(True), LABELS), ClassifierGuide(_classifier(False), LABELS, name="other")
    denoiser = _denoiser()
    x, sigma, target, _ = _inputs()
    s = GuideSettings(scale=1.0)
    d = denoiser(x, sigma).detach()
    one = GuidedDenoiser(denoiser, [GuideTerm(g1, target, s)])(x, sigma) - d
    two = GuidedDenoiser(denoiser, [GuideTerm(g2, target, s)])(x, sigma) - d
    both = GuidedDenoiser(denoiser, [GuideTerm(g1, target, s, 0.25), GuideTerm(g2, target, s, 2.0)])(x, sigma) - d
    torch.testing.assert_close(both, 0.25 * one + 2.0 * two)


def test_guidance_raises_the_target_probability():
    """One guided step moves x0_hat towards the target class of a (random but fixed) classifier."""
    guide = ClassifierGuide(_classifier(False), LABELS)
    denoiser = _denoiser()
    x, sigma, target, _ = _inputs()
    settings = GuideSettings(scale=0.5, norm_scaling=True)
    before = guide.log_prob(denoiser(x, sigma), sigma, target, torch.ones(2, dtype=torch.float64))
    after_x0 = GuidedDenoiser(denoiser, [GuideTerm(guide, target, settings)])(x, sigma)
    after = guide.log_prob(after_x0, sigma, target, torch.ones(2, dtype=torch.float64))
    assert bool((after > before).all())


@pytest.mark.parametrize("schedule", ["constant", "ramp-up", "ramp-down", "hump"])
def test_strength_schedules_stay_in_range_and_respect_the_window(schedule):
    s = GuideSettings(scale=2.0, schedule=schedule, sigma_lo=0.1, sigma_hi=10.0)
    sigma = torch.tensor([0.05, 0.1, 1.0, 10.0, 20.0])
    k = s.strength(sigma)
    assert k[0] == 0 and k[-1] == 0
    assert bool(((k >= 0) & (k <= 2.0)).all())


def test_profile_validation_and_round_trip(tmp_path):
    p = GuidanceProfile(guide=GuideSettings(scale=2.0, norm_scaling=True), per_guide={"speaker": GuideSettings(scale=0.5)})
    loaded = GuidanceProfile.load(p.save(tmp_path / "p.json"))
    assert loaded == p and loaded.settings_for("speaker").scale == 0.5 and loaded.settings_for("digit").scale == 2.0
    bad = [
        {"guide": {"scale": -1}},
        {"guide": {"scale": float("nan")}},
        {"guide": {"sigma_lo": 5, "sigma_hi": 1}},
        {"guide": {"temperatures": [1.0]}},
        {"sampler": {"steps": 0}},
        {"sampler": {"kind": "ddim"}},
        {"version": 99},
        {"unknown_knob": 1},
    ]
    for data in bad:
        with pytest.raises(ValueError):
            GuidanceProfile.model_validate(data)
