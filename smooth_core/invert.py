"""DDIM inversion (eta 0): clean latents to the initial noise of DDIM sampling.

The Tune-A-Video / diffusers `DDIMInverseScheduler` convention, on the schedule of
`sample.py`: the clean latents are taken to sit at the final level alphas_cumprod[0], and
step k = 0..n-1 visits the timesteps in ascending order, t = t_{n-1-k} = 1, 1 + r, ...
(r = T // n). It predicts the noise at that timestep from the current, still cleaner
latents and moves them with `sample.ddim_step` up to level alphas_cumprod[t]. This is the
sampler's step i = n-1-k with the two levels swapped.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import checks
from .sample import NoisePredictor, StepCallback, ddim_schedule, ddim_step, predict_noise


def ddim_invert(
    eps_fn: NoisePredictor,
    latents: torch.Tensor,
    num_steps: int = 50,
    alphas_cumprod: Optional[torch.Tensor] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Invert clean latents to noise with deterministic DDIM (eta 0), from low to high noise.

    Step k = 0..n-1 at timestep t = t_{n-1-k} (ascending): eps = eps_fn(x, t), then
    x <- sqrt(a_next) x0_pred + sqrt(1 - a_next) eps with x0_pred from the current level
    (alphas_cumprod[0] at the first step, then the previous step's alphas_cumprod[t]) and
    a_next = alphas_cumprod[t].

    Args:
        eps_fn: eps_fn(x_t, t) -> eps, x_t and eps (b, f, c, h, w), t an int timestep. The
            caller closes over the model and the conditioning (the "" prompt, no CFG, for
            Tune-A-Video). x_t is given in float32 (float64 for float64 latents).
        latents: the clean, VAE-scaled latents x0, (b, f, c, h, w).
        num_steps: number of DDIM steps, 1..T-1; use the sampler's value.
        alphas_cumprod: alpha_bar per training timestep, (T,); None is SD 1.x.
        callback: callback(step_index, num_steps, x) after each step, step_index 0..n-1, x the
            new latents (read only). To cancel, raise from it: the exception propagates
            unchanged and no further step runs.

    Returns the noise latents at level alphas_cumprod[t_0] (the sampler's starting level),
    same shape and dtype as latents.
    """
    checks.require_video("latents", latents, 1, "DDIM inversion")
    timesteps, alpha_bars = ddim_schedule(num_steps, alphas_cumprod)
    x = latents.to(checks.compute_dtype(latents))
    for step, i in enumerate(reversed(range(num_steps))):
        eps = predict_noise(eps_fn, x, timesteps[i])
        x = ddim_step(x, eps, alpha_bars[i + 1], alpha_bars[i])
        if callback is not None:
            callback(step, num_steps, x)
    return x.to(latents.dtype)
