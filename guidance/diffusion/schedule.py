"""Sampling noise levels."""

from __future__ import annotations

import torch

from guidance.edm_constants import RHO, SIGMA_MAX, SIGMA_MIN


def karras_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> torch.Tensor:
    """EDM's time steps (Karras et al. 2022, eq. 5): `steps` decreasing sigmas, then a final 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(steps, dtype=torch.float64)
    denom = max(steps - 1, 1)
    inv = sigma_max ** (1 / rho) + i / denom * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    sigmas = inv**rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()
