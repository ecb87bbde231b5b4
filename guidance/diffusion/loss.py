"""Denoising score matching loss with EDM's log-normal noise distribution and weighting."""

from __future__ import annotations

import torch


class EDMLoss:
    """E_sigma,n [ lambda(sigma) ||D(y + sigma n, sigma) - y||^2 ], ln sigma ~ N(P_mean, P_std^2).

    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 makes the effective target of the
    raw network unit-variance at every noise level (Karras et al. 2022, sec. 5).
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 1.0) -> None:
        self.p_mean, self.p_std, self.sigma_data = p_mean, p_std, sigma_data

    def sample_sigma(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, device=device, generator=generator)
        return (z * self.p_std + self.p_mean).exp()

    def __call__(self, denoiser, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        sigma = self.sample_sigma(y.shape[0], y.device, generator)
        noise = torch.randn(y.shape, device=y.device, generator=generator)
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        denoised = denoiser(y + sigma.view(-1, 1, 1, 1) * noise, sigma)
        per_item = ((denoised - y) ** 2).flatten(1).mean(1)
        return (weight * per_item).mean()
