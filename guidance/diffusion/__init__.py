"""EDM diffusion (Karras et al. 2022): noise schedule, preconditioning, DSM loss, samplers.

Every sampler sees only a denoiser callable `D(x, sigma) -> x0_hat`; guidance wraps D and never
edits a sampler.
"""

from guidance.diffusion.loss import EDMLoss
from guidance.diffusion.precond import Denoiser, EDMPrecond
from guidance.diffusion.samplers import SamplerConfig, SamplerState, init_state, sample, sampler_step
from guidance.diffusion.schedule import karras_sigmas

__all__ = [
    "Denoiser",
    "EDMLoss",
    "EDMPrecond",
    "SamplerConfig",
    "SamplerState",
    "init_state",
    "karras_sigmas",
    "sample",
    "sampler_step",
]
