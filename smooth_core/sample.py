"""DDIM sampling (eta 0) with the training-free noise correction of the paper, Eq. 5.

The schedule is diffusers' `DDIMScheduler` as configured for SD 1.x (timestep_spacing
"leading", steps_offset 1, set_alpha_to_one False). For n steps it visits the timesteps
t_0 > t_1 > ... > t_{n-1} = 1 of `ddim_timesteps` and the noise levels

    alpha_bars[i] = alphas_cumprod[t_i]  (i < n),    alpha_bars[n] = alphas_cumprod[0]

(the "final alpha"). Sampling step i moves x from level i to level i + 1 with the noise
predicted at t_i; inversion (`invert.py`) runs the same `ddim_step` backwards, from level
i + 1 to level i with the noise predicted at t_i, for i = n-1 down to 0. Both directions
are exact inverses of each other whenever the prediction does not depend on x.

Latents are the variance-preserving, VAE-scaled latents (b, f, c, h, w) of `schedule.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import checks, correction, schedule

NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]


def ddim_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The timesteps of diffusers' DDIMScheduler with "leading" spacing and steps_offset 1.

    t_i = (num_steps - 1 - i) * (num_train_timesteps // num_steps) + 1, i = 0..num_steps-1:
    int64, shape (num_steps,), descending (the order in which sampling visits them).
    num_steps runs from 1 to num_train_timesteps - 1: at num_train_timesteps the offset
    would put the first timestep past the end of the schedule.
    """
    is_int = isinstance(num_steps, int) and not isinstance(num_steps, bool)
    if not (is_int and 1 <= num_steps < num_train_timesteps):
        raise ValueError(
            f"num_steps must be an integer from 1 to {num_train_timesteps - 1}, got {num_steps!r}"
        )
    step_ratio = num_train_timesteps // num_steps
    return torch.arange(num_steps - 1, -1, -1, dtype=torch.int64) * step_ratio + 1


def ddim_schedule(
    num_steps: int, alphas_cumprod: Optional[torch.Tensor] = None
) -> tuple[list[int], list[float]]:
    """The timesteps t_0..t_{n-1} (descending) and the n + 1 noise levels alpha_bars[0..n].

    Args:
        num_steps: n, the number of DDIM steps.
        alphas_cumprod: alpha_bar per training timestep, shape (T,); None is SD 1.x
            (`schedule.sd15_alphas_cumprod()`).

    alpha_bars[i] = alphas_cumprod[t_i] for i < n and alpha_bars[n] = alphas_cumprod[0], as
    diffusers with set_alpha_to_one=False. Levels are Python floats taken in float64.
    """
    if alphas_cumprod is None:
        alphas_cumprod = schedule.sd15_alphas_cumprod()
    if not isinstance(alphas_cumprod, torch.Tensor) or alphas_cumprod.dim() != 1:
        raise ValueError("alphas_cumprod must be a 1-D tensor with one alpha_bar per training timestep")
    levels = alphas_cumprod.detach().to("cpu", torch.float64)
    if not bool(((levels > 0) & (levels <= 1)).all()):
        raise ValueError("alphas_cumprod must lie in (0, 1]: pass the model's alpha_bar schedule")
    timesteps = ddim_timesteps(num_steps, levels.shape[0]).tolist()
    alpha_bars = levels[timesteps].tolist() + [levels[0].item()]
    return timesteps, alpha_bars


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t, alpha_bar_prev) -> torch.Tensor:
    """One deterministic DDIM update (eta 0) from noise level alpha_bar_t to alpha_bar_prev.

    x0_pred = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t);  x_prev = sqrt(a_prev) x0_pred + sqrt(1 - a_prev) eps.

    The formula does not care about the direction: sampling passes the current, noisier
    level as alpha_bar_t; inversion passes the current, cleaner level as alpha_bar_t and the
    noisier target as alpha_bar_prev.

    Args:
        x_t: latents at level alpha_bar_t, (b, f, c, h, w).
        eps: the noise prediction for x_t, same shape.
        alpha_bar_t, alpha_bar_prev: floats in (0, 1], or tensors broadcastable to x_t.

    Returns the latents at level alpha_bar_prev, same shape.
    """
    x0_pred = (x_t - (1.0 - alpha_bar_t) ** 0.5 * eps) / alpha_bar_t**0.5
    return alpha_bar_prev**0.5 * x0_pred + (1.0 - alpha_bar_prev) ** 0.5 * eps


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_uncond + scale * (eps_cond - eps_uncond); both (b, f, c, h, w). Scale 1 is eps_cond."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


@dataclass(frozen=True)
class SmoothNoise:
    """Settings of the Eq. 5 noise correction inside the sampler.

    lambda1: divisor of C (1000); lambda3: correction strength (0.5; 0 turns it off).
    start, end: the correction is active at step i of n when start <= i / n < end, i counted
    from the noisiest step; (0, 1) is every step.
    """

    lambda1: float = 1000.0
    lambda3: float = 0.5
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self):
        if not (0.0 < float(self.lambda1) < math.inf):
            raise ValueError(f"lambda1 must be a finite number > 0, got {self.lambda1}")
        checks.require_nonnegative_finite("lambda3", self.lambda3)
        if not (0.0 <= float(self.start) <= float(self.end) <= 1.0):
            raise ValueError(
                f"start and end are fractions of the sampling steps with 0 <= start <= end <= 1, "
                f"got start={self.start}, end={self.end}"
            )

    def is_active(self, step_index: int, num_steps: int) -> bool:
        return self.start <= step_index / num_steps < self.end


def require_finite_samples(x: torch.Tensor) -> None:
    """The check the Eq. 5 samplers make once, after their last step (a check at every step
    would make a GPU wait for each model call)."""
    if not torch.isfinite(x).all():
        raise ValueError(
            "the sampling ended in NaN or inf latents: the model predicted NaN or inf at some step (a diverged "
            "tune, or fp16 overflow; Eq. 5 passes such values on). Run the model in float32 or bf16, or re-tune "
            "with a lower learning_rate"
        )


def predict_noise(eps_fn: NoisePredictor, x: torch.Tensor, t: int) -> torch.Tensor:
    """eps_fn(x, t), checked to have x's shape and cast to x's dtype (the sampler's precision)."""
    eps = eps_fn(x, t)
    if not isinstance(eps, torch.Tensor) or eps.shape != x.shape:
        shape = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise ValueError(f"eps_fn must return a noise prediction of shape {tuple(x.shape)}, got {shape}")
    return eps.to(x.dtype)


def ddim_sample(
    eps_fn: NoisePredictor,
    noise: torch.Tensor,
    num_steps: int = 50,
    alphas_cumprod: Optional[torch.Tensor] = None,
    smooth: Optional[SmoothNoise] = None,
    callback: Optional[StepCallback] = None,
) -> torch.Tensor:
    """Deterministic DDIM sampling (eta 0), optionally with the noise correction of Eq. 5.

    At each step i, at timestep t = t_i: eps = eps_fn(x, t); where `smooth` is active,
    eps <- correction.correct_noise(eps, x, C, lambda1, lambda3) with
    C = schedule.c_coefficient(alpha_bar[t_i], alpha_bar[t_{i+1}]) (the final alpha after the
    last step), one C per video; then x <- ddim_step(x, eps, alpha_bar[t_i], alpha_bar[t_{i+1}]).
    This is diffusers' DDIMScheduler.step with eta 0, step after step.

    Args:
        eps_fn: eps_fn(x_t, t) -> eps, x_t and eps (b, f, c, h, w), t an int timestep. It
            returns the final, already guided noise (use `classifier_free_guidance` in it):
            Eq. 5 corrects the post-CFG eps. x_t is given in the sampler's precision (float32,
            or float64 for float64 noise); cast it to the model's dtype inside.
        noise: the initial latents at the noisiest level, (b, f, c, h, w), e.g. from
            `invert.ddim_invert` or seeded Gaussian noise. Two or more frames with `smooth`.
        num_steps: number of DDIM steps, 1..T-1 (50 in the paper).
        alphas_cumprod: alpha_bar per training timestep, (T,); None is SD 1.x.
        smooth: None for plain DDIM, or the `SmoothNoise` settings of Eq. 5.
        callback: callback(step_index, num_steps, x) after each step, step_index 0..n-1, x the
            new latents (read only). To cancel, raise from it: the exception propagates
            unchanged and no further step runs.

    Returns the latents after the last step, at level alphas_cumprod[0] (diffusers'
    convention, ~0.99915 for SD 1.x: the pipeline decodes these), same shape and dtype as noise.
    With `smooth`, a result holding NaN or inf (a model that predicted them) raises ValueError.
    """
    checks.require_video("noise", noise, 1 if smooth is None else 2, "the noise correction (Eq. 5)")
    timesteps, alpha_bars = ddim_schedule(num_steps, alphas_cumprod)
    dtype = checks.compute_dtype(noise)
    x = noise.to(dtype)
    corrected = False
    for i, t in enumerate(timesteps):
        eps = predict_noise(eps_fn, x, t)
        a_t, a_prev = alpha_bars[i], alpha_bars[i + 1]
        if smooth is not None and smooth.is_active(i, num_steps):
            # C in float64 (fp16 C is ~9% off), one per video: every video is at this step's t.
            # Made on x's device from a Python float: a copy from the host would wait for the GPU.
            c_value = float(schedule.c_coefficient(torch.tensor(a_t, dtype=torch.float64),
                                                   torch.tensor(a_prev, dtype=torch.float64)))
            c = torch.full((x.shape[0],), c_value, dtype=dtype, device=x.device)
            eps = correction.correct_noise(eps, x, c, smooth.lambda1, smooth.lambda3, check_finite=False)
            corrected = True
        x = ddim_step(x, eps, a_t, a_prev)
        if callback is not None:
            callback(i, num_steps, x)
    if corrected:  # once, not at every step: a NaN stays NaN to the end
        require_finite_samples(x)
    return x.to(noise.dtype)
