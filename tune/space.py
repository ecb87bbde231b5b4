"""The search space over a guidance profile, written define-by-run for Optuna.

Norm-scaled and plain guidance read `scale` in different units (a fraction of the denoiser's step vs
a multiplier of sigma^2 * grad log p), so each branch has its own log-uniform scale parameter. A
profile with calibrated per-bin temperatures is searched through one multiplier of those
temperatures, which keeps the calibration's shape. With several guides every guide gets its own
parameters (prefixed by the guide's name) and lands in `per_guide`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from guidance.edm_constants import SIGMA_MAX, SIGMA_MIN
from guidance.guides import GuidanceProfile, GuideSettings

SCHEDULES = ("constant", "ramp-up", "ramp-down", "hump")


@dataclass(frozen=True)
class SpaceBounds:
    """Ranges of every searched knob; one source of defaults for the CLI and the tests."""

    scale_norm: tuple[float, float] = (0.03, 3.0)  # fraction of ||D - x|| (norm scaling on)
    scale_plain: tuple[float, float] = (0.3, 30.0)  # gamma (norm scaling off)
    sigma_lo: tuple[float, float] = (SIGMA_MIN, 0.8)  # the sampler's sigma_min: no lower cut in effect
    sigma_hi: tuple[float, float] = (1.0, SIGMA_MAX)
    temperature: tuple[float, float] = (0.3, 3.0)
    temperature_mult: tuple[float, float] = (0.5, 2.0)
    steps: tuple[int, int] = (8, 12)
    churn: tuple[float, float] = (0.0, 4.0)


# The pitch guide (CREPE on x0_hat) reads a pitch only below sigma ~16 (reports/pitch/calibration.json:
# agreement with the clean clip's pitch 0.19 at sigma 8, 0.06 at 16, 0 at 40), and guiding into the last
# steps fools CREPE without voicing the sample (reports/pitch/sweep.md), so its window is searched there.
PITCH_BOUNDS = replace(SpaceBounds(), scale_norm=(0.05, 1.5), sigma_lo=(0.1, 2.0), sigma_hi=(2.0, 30.0))


@dataclass(frozen=True)
class ProfileSpace:
    """Define-by-run space (picklable, so a restored sweep rebuilds the same searcher)."""

    base: GuidanceProfile
    guide_names: tuple[str, ...] = ("digit",)
    bounds: SpaceBounds = SpaceBounds()
    guide_bounds: tuple[tuple[str, SpaceBounds], ...] = field(default=(("pitch", PITCH_BOUNDS),))

    def bounds_for(self, name: str) -> SpaceBounds:
        """A guide's own ranges (the pitch guide's window), else the shared ones."""
        return dict(self.guide_bounds).get(name, self.bounds)

    def _prefix(self, name: str) -> str:
        return "" if len(self.guide_names) == 1 else f"{name}."

    def __call__(self, trial: Any) -> None:
        """Optuna define-by-run: suggest every knob on `trial` (values are captured by Ray)."""
        for name in self.guide_names:
            b = self.bounds_for(name)
            p, base = self._prefix(name), self.base.settings_for(name)
            if trial.suggest_categorical(f"{p}norm_scaling", [True, False]):
                trial.suggest_float(f"{p}scale_norm", *b.scale_norm, log=True)
            else:
                trial.suggest_float(f"{p}scale_plain", *b.scale_plain, log=True)
            trial.suggest_categorical(f"{p}schedule", list(SCHEDULES))
            trial.suggest_float(f"{p}sigma_lo", *b.sigma_lo, log=True)
            trial.suggest_float(f"{p}sigma_hi", *b.sigma_hi, log=True)
            if base.temperatures is not None:
                trial.suggest_float(f"{p}temperature_mult", *b.temperature_mult, log=True)
            else:
                trial.suggest_float(f"{p}temperature", *b.temperature, log=True)
        trial.suggest_int("steps", *self.bounds.steps)
        trial.suggest_float("churn", *self.bounds.churn)

    def default_point(self, steps: int) -> dict[str, Any]:
        """The base profile as a point of this space (Optuna evaluates it first)."""
        point: dict[str, Any] = {}
        for name in self.guide_names:
            p, g = self._prefix(name), self.base.settings_for(name)
            point[f"{p}norm_scaling"] = g.norm_scaling
            point[f"{p}scale_norm" if g.norm_scaling else f"{p}scale_plain"] = g.scale
            point[f"{p}schedule"] = g.schedule
            b = self.bounds_for(name)
            point[f"{p}sigma_lo"] = min(max(g.sigma_lo, b.sigma_lo[0]), b.sigma_lo[1])
            point[f"{p}sigma_hi"] = min(max(g.sigma_hi, b.sigma_hi[0]), b.sigma_hi[1])
            if g.temperatures is not None:
                point[f"{p}temperature_mult"] = 1.0
            else:
                point[f"{p}temperature"] = g.temperature
        point["steps"] = steps
        point["churn"] = self.base.sampler.churn
        return point

    def to_profile(self, config: dict[str, Any], name: str = "tuned") -> GuidanceProfile:
        """The profile a trial's config stands for (everything not searched comes from the base)."""
        guides: dict[str, GuideSettings] = {}
        for gname in self.guide_names:
            p, base = self._prefix(gname), self.base.settings_for(gname)
            norm = bool(config[f"{p}norm_scaling"])
            changes: dict[str, Any] = {
                "norm_scaling": norm,
                "scale": float(config[f"{p}scale_norm" if norm else f"{p}scale_plain"]),
                "schedule": config[f"{p}schedule"],
                "sigma_lo": float(config[f"{p}sigma_lo"]),
                "sigma_hi": float(config[f"{p}sigma_hi"]),
            }
            if base.temperatures is not None:
                mult = float(config[f"{p}temperature_mult"])
                changes["temperatures"] = [min(100.0, t * mult) for t in base.temperatures]
            else:
                changes["temperature"] = float(config[f"{p}temperature"])
            guides[gname] = GuideSettings(**{**base.model_dump(), **changes})
        sampler = {**self.base.sampler.model_dump(), "steps": int(config["steps"]), "churn": float(config["churn"])}
        update: dict[str, Any] = {"name": name, "sampler": self.base.sampler.model_validate(sampler)}
        if len(self.guide_names) == 1:
            update["guide"] = guides[self.guide_names[0]]
        else:
            update["per_guide"] = {**self.base.per_guide, **guides}
        return GuidanceProfile.model_validate({**self.base.model_dump(), **update})


def profile_params(profile: GuidanceProfile) -> dict[str, Any]:
    """Flat `section.field` view of a profile, for MLflow params and result tables."""
    out: dict[str, Any] = {"name": profile.name}
    out.update({f"sampler.{k}": v for k, v in profile.sampler.model_dump().items()})
    out.update({f"guide.{k}": v for k, v in profile.guide.model_dump().items() if v is not None})
    for gname, g in profile.per_guide.items():
        out.update({f"{gname}.{k}": v for k, v in g.model_dump().items() if v is not None})
    return out
