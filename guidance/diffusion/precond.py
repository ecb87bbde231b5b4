"""EDM preconditioning: wrap any backbone F into a denoiser D(x, sigma) -> x0_hat."""

from __future__ import annotations

from typing import Protocol

import torch


class Denoiser(Protocol):
    """The one contract every sampler relies on: x (B, 1, M, T), sigma (B,) -> x0_hat like x."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """c_skip, c_out, c_in, c_noise from Karras et al. 2022, Table 1 (EDM column)."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecond(torch.nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise).

    `net(x, c_noise)` may be any network mapping an image and a noise embedding input to an image.
    """

    def __init__(self, net: torch.nn.Module, sigma_data: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = (c.view(-1, 1, 1, 1) for c in edm_coefficients(sigma, self.sigma_data))
        f = self.net(c_in * x, c_noise.flatten())
        return c_skip * x + c_out * f
