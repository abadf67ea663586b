"""The Stable Diffusion 1.x noise schedule and the C coefficient of the paper's Eq. 2.

Notation: `alpha_bar` is the cumulative product of (1 - beta) (diffusers' alphas_cumprod).
ComfyUI's k-diffusion samplers work in sigma space, where the latent is x = x0 + sigma * eps;
the variance-preserving latent of the paper is x_t = x / sqrt(1 + sigma^2) and
alpha_bar = 1 / (1 + sigma^2).
"""

from __future__ import annotations

import torch

SD15_BETA_START = 0.00085
SD15_BETA_END = 0.012
SD15_TIMESTEPS = 1000


def sd15_alphas_cumprod(
    beta_start: float = SD15_BETA_START,
    beta_end: float = SD15_BETA_END,
    num_timesteps: int = SD15_TIMESTEPS,
) -> torch.Tensor:
    """alpha_bar_t for the `scaled_linear` schedule of SD 1.x, float64, shape (num_timesteps,).

    betas are linear in sqrt(beta) from sqrt(beta_start) to sqrt(beta_end), squared.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def c_coefficient(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """C of Eq. 2: sqrt(a_t) / (sqrt(a_t) sqrt(1 - a_prev) - sqrt(a_prev) sqrt(1 - a_t)).

    Elementwise and broadcasting; `prev` is the next, less noisy step (t - 1 in training,
    the sampler's next timestep at inference; alpha_bar_prev = 1 for t = 0). C is negative.
    Computed in float32 at least (half precision is ~9% off at large t); float64 stays float64.
    """
    a_t = torch.as_tensor(alpha_bar_t)
    a_prev = torch.as_tensor(alpha_bar_prev)
    dtype = torch.float64 if torch.float64 in (a_t.dtype, a_prev.dtype) else torch.float32
    a_t = a_t.to(dtype)
    a_prev = a_prev.to(a_t.device, dtype)
    sqrt_t = a_t.sqrt()
    sqrt_prev = a_prev.sqrt()
    return sqrt_t / (sqrt_t * (1.0 - a_prev).sqrt() - sqrt_prev * (1.0 - a_t).sqrt())


def c_for_timesteps(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """C for integer training timesteps, one per video: prev = t - 1, and alpha_bar_prev = 1 at t = 0."""
    timesteps = timesteps.long()
    acp = alphas_cumprod.to(timesteps.device)
    a_t = acp[timesteps]
    a_prev = torch.where(timesteps > 0, acp[(timesteps - 1).clamp_min(0)], torch.ones_like(a_t))
    return c_coefficient(a_t, a_prev)


def sigma_to_alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """alpha_bar = 1 / (1 + sigma^2) (k-diffusion sigma of an epsilon-prediction VP model)."""
    sigma = torch.as_tensor(sigma)
    return 1.0 / (1.0 + sigma * sigma)


def alpha_bar_to_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar); sigma = 0 at alpha_bar = 1."""
    alpha_bar = torch.as_tensor(alpha_bar)
    return ((1.0 - alpha_bar) / alpha_bar).sqrt()
