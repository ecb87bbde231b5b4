"""The guidance profile: every calibration and guidance knob as plain, validated, versioned data.

This is what Ray Tune searches, what the Serve API accepts and what MLflow stores. Per-step
strength of a guide is a pure function of sigma computed from its `GuideSettings`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from guidance.strict import StrictModel
from guidance.diffusion.samplers import SamplerConfig

PROFILE_VERSION = 1
Schedule = Literal["constant", "ramp-up", "ramp-down", "hump"]


class _Strict(StrictModel):
    """Profiles' strict base (`guidance.strict`)."""


class SamplerSettings(_Strict):
    """How to integrate the ODE/SDE (EDM's schedule and solver)."""

    # defaults are SamplerConfig's (written once, in guidance.diffusion)
    steps: int = Field(SamplerConfig.steps, ge=1, le=1000)
    kind: Literal["euler", "heun"] = SamplerConfig.kind
    sigma_min: float = Field(SamplerConfig.sigma_min, gt=0)
    sigma_max: float = Field(SamplerConfig.sigma_max, gt=0)
    rho: float = Field(SamplerConfig.rho, gt=0)
    churn: float = Field(SamplerConfig.churn, ge=0)

    @model_validator(mode="after")
    def _range(self) -> "SamplerSettings":
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")
        return self

    def to_config(self) -> SamplerConfig:
        return SamplerConfig(
            steps=self.steps, kind=self.kind, sigma_min=self.sigma_min, sigma_max=self.sigma_max, rho=self.rho, churn=self.churn
        )


class GuideSettings(_Strict):
    """How strongly, where and on what one guide acts.

    Without norm scaling the guided denoiser adds `strength(sigma) * sigma^2 * grad log p(y|.)`
    (classifier guidance in EDM form). With `norm_scaling` (Guided-TTS) the same term is rescaled to
    `strength(sigma)` times the norm of the denoising update ||D(x) - x||, so `scale` becomes a
    fraction of the denoiser's own step and huge gradients cannot blow samples up.
    """

    scale: float = Field(1.0, ge=0, le=1000)
    schedule: Schedule = "constant"
    sigma_lo: float = Field(0.0, ge=0, description="guidance is off below this sigma")
    sigma_hi: float = Field(SamplerConfig.sigma_max, gt=0, description="guidance is off above this sigma")
    temperature: float = Field(1.0, gt=0, le=100)
    temperature_sigma_edges: list[float] | None = Field(None, description="ascending sigma bin edges (n+1)")
    temperatures: list[float] | None = Field(None, description="one temperature per sigma bin (n)")
    norm_scaling: bool = False
    input: Literal["x0_hat", "x_t"] = Field("x0_hat", description="what a clean classifier reads")
    through_denoiser: bool = Field(False, description="backpropagate through D to get the gradient wrt x_t")
    smoothing: float = Field(0.0, ge=0, le=10, description="std of Gaussian noise averaged over (randomized smoothing)")
    smoothing_samples: int = Field(4, ge=1, le=64, description="noise draws averaged when smoothing > 0")

    @model_validator(mode="after")
    def _check(self) -> "GuideSettings":
        if self.sigma_lo >= self.sigma_hi:
            raise ValueError(f"sigma_lo ({self.sigma_lo}) must be below sigma_hi ({self.sigma_hi})")
        edges, temps = self.temperature_sigma_edges, self.temperatures
        if (edges is None) != (temps is None):
            raise ValueError("temperature_sigma_edges and temperatures go together")
        if edges is not None and temps is not None:
            if len(edges) != len(temps) + 1 or len(temps) < 1:
                raise ValueError("need len(temperature_sigma_edges) == len(temperatures) + 1")
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError("temperature_sigma_edges must be strictly ascending")
            if any(not (0 < t <= 100) for t in temps):
                raise ValueError("temperatures must lie in (0, 100]")
        return self

    def strength(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample guidance strength at noise level `sigma` (B,): scale x schedule x window."""
        lo, hi = max(self.sigma_lo, 1e-4), self.sigma_hi
        active = (sigma >= self.sigma_lo) & (sigma <= hi)
        t = ((math.log(hi) - sigma.clamp_min(1e-8).log()) / (math.log(hi) - math.log(lo))).clamp(0, 1)
        weight = {
            "constant": torch.ones_like(t),
            "ramp-up": t,  # stronger as the noise goes down
            "ramp-down": 1 - t,  # stronger at high noise
            "hump": torch.sin(math.pi * t).clamp_min(0),
        }[self.schedule]
        return self.scale * weight * active.to(weight.dtype)

    def temperature_at(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-sample temperature: the calibrated bin's value, or the global one."""
        if self.temperatures is None or self.temperature_sigma_edges is None:
            return torch.full_like(sigma, self.temperature)
        edges = torch.tensor(self.temperature_sigma_edges, dtype=sigma.dtype, device=sigma.device)
        idx = (torch.bucketize(sigma, edges) - 1).clamp(0, len(self.temperatures) - 1)
        return torch.tensor(self.temperatures, dtype=sigma.dtype, device=sigma.device)[idx]


class GuidanceProfile(_Strict):
    """Sampler settings plus guide settings (shared, with optional per-guide overrides)."""

    version: int = PROFILE_VERSION
    name: str = "default"
    sampler: SamplerSettings = SamplerSettings()
    guide: GuideSettings = GuideSettings()
    per_guide: dict[str, GuideSettings] = Field(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != PROFILE_VERSION:
            raise ValueError(f"unsupported profile version {v}; this build reads version {PROFILE_VERSION}")
        return v

    def settings_for(self, guide_name: str) -> GuideSettings:
        return self.per_guide.get(guide_name, self.guide)

    def with_guide(self, **changes) -> "GuidanceProfile":
        """A copy whose shared guide settings (and every per-guide override) take `changes`."""
        guide = GuideSettings(**{**self.guide.model_dump(), **changes})
        per = {k: GuideSettings(**{**v.model_dump(), **changes}) for k, v in self.per_guide.items()}
        return self.model_copy(update={"guide": guide, "per_guide": per})

    def with_sampler(self, **changes) -> "GuidanceProfile":
        return self.model_copy(update={"sampler": SamplerSettings(**{**self.sampler.model_dump(), **changes})})

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def load(cls, path: str | Path) -> "GuidanceProfile":
        return cls.model_validate(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path


# One source of default profiles per guide kind. The clean classifier's defaults follow what a
# probe here saw: plain gradients from a classifier that never saw noise wreck the samples, so
# it acts only below sigma 5 and is rescaled relative to the denoiser's own step.
def _shipped(kind: str) -> GuidanceProfile:
    """A default profile file of guidance/guides/defaults (picked on the validation split; see tune.pick_defaults)."""
    from guidance.guides.defaults import DEFAULTS_DIR

    return GuidanceProfile.load(DEFAULTS_DIR / f"{kind}.json")


DEFAULT_PROFILES: dict[str, GuidanceProfile] = {
    "noisy": _shipped("noisy"),
    "clean": _shipped("clean"),
    "unconditional": GuidanceProfile(name="unconditional", guide=GuideSettings(scale=0.0)),
    # A Hugging Face classifier is a clean classifier too (it reads x0_hat through an adapter), so
    # it starts from the clean guide's settings; see guidance.guides.hf.
    "hf": GuidanceProfile(
        name="hf-default", guide=GuideSettings(scale=0.3, norm_scaling=True, sigma_hi=5.0, input="x0_hat")
    ),
}
