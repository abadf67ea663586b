"""The paper's Eq. 5 inside a k-diffusion sampler: DDIM (eta 0) in ComfyUI's sigma space.

ComfyUI's samplers see a latent x = x0 + sigma * eps and a model that returns the denoised
estimate x0. The paper's quantities are variance-preserving: x_t = x / sqrt(1 + sigma^2)
and alpha_bar = 1 / (1 + sigma^2) (`schedule.py`). In these coordinates DDIM (eta 0) is the
Euler step x_next = x + eps * (sigma_next - sigma): ComfyUI's own "ddim" sampler is
k-diffusion's Euler on the ddim_uniform schedule.
"""

from __future__ import annotations

from typing import Optional

import torch
from tqdm.auto import trange

from . import checks, correction, schedule
from .sample import SmoothNoise, require_finite_samples

SAMPLER_NAME = "the Smooth Noise Sampler (Eq. 5)"


def correct_noise_sigma_space(
    eps: torch.Tensor, x: torch.Tensor, sigma: float, sigma_next: float, smooth: SmoothNoise
) -> torch.Tensor:
    """Eq. 5 on the frames of one video in sigma space, for the step from sigma to sigma_next.

    Args:
        eps: the post-CFG noise prediction (x - denoised) / sigma, (f, c, h, w): frames as batch.
        x: the sampler's latents at sigma, same shape.
        sigma, sigma_next: this step's noise levels, sigma > sigma_next >= 0 (0: alpha_bar_prev = 1).
        smooth: lambda1 and lambda3 of Eq. 5.

    C (Eq. 2) is computed in float64 from alpha_bar = 1 / (1 + sigma^2) of both levels.
    Returns the corrected eps, same shape and dtype. NaN or inf pass through unchecked (the
    sampler checks its result once).
    """
    alpha_bar_t, alpha_bar_prev = schedule.sigma_to_alpha_bar(
        torch.tensor([float(sigma), float(sigma_next)], dtype=torch.float64)
    )
    # C made on eps's device from a Python float: a copy from the host would wait for the GPU.
    c = torch.full((1,), float(schedule.c_coefficient(alpha_bar_t, alpha_bar_prev)),
                   dtype=checks.compute_dtype(eps, x), device=eps.device)
    x_vp = x * alpha_bar_t.sqrt().item()
    return correction.correct_noise(eps[None], x_vp[None], c, smooth.lambda1, smooth.lambda3, check_finite=False)[0]


def correct_denoised(
    x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float, smooth: SmoothNoise
) -> torch.Tensor:
    """Eq. 5 on a sampler's denoised estimate: eps = (x - denoised) / sigma is corrected by
    `correct_noise_sigma_space` and returned as the denoised estimate x - sigma * eps.

    The one place where a k-diffusion step meets the correction: the Smooth Noise Sampler calls it
    between its model call and its Euler step, the Smooth Noise (Eq. 5) model patch on the guided
    prediction of any sampler. x, denoised: (f, c, h, w), the frames of one video as the batch.
    """
    eps = correct_noise_sigma_space((x - denoised) / sigma, x, sigma, sigma_next, smooth)
    return x - sigma * eps


def require_video_frames(x: torch.Tensor, who: str) -> None:
    """Eq. 5 works across the frames of one video, the latent batch: at least 2 of them."""
    if x.dim() != 4 or x.shape[0] < 2:
        raise ValueError(
            f"{who} needs at least 2 frames as an image latent batch "
            f"(frames, channels, height, width), got {tuple(x.shape)}: give it a video's frames, "
            f"or set lambda3 to 0 to turn the correction off"
        )


def require_decreasing(levels: list[float], steps, who: str) -> None:
    """Eq. 5 is a sampling correction: each corrected step goes to a lower noise level."""
    if any(not levels[i] > levels[i + 1] >= 0 for i in steps):
        raise ValueError(
            f"{who} needs decreasing sigmas (sampling, not inversion): "
            "use a sampling scheduler such as ddim_uniform, or set lambda3 to 0"
        )


def schedule_step(levels: list[float], sigma: float, rtol: float = 1e-5) -> Optional[tuple[int, float]]:
    """Where a model call at `sigma` sits in a sampler's decreasing schedule `levels`:
    (step index i, the next level below sigma), or None at or below the last level.

    A call at a level of the schedule (within rtol) is step i, going to levels[i + 1]. Samplers
    that call the model between levels (Heun, DPM++ 2S, SDE samplers' midpoints, Euler with
    churn above its level) get the next level below their sigma and the step they are in.
    """
    for j, level in enumerate(levels):
        if level < sigma * (1.0 - rtol):
            return max(j - 1, 0), level
    return None


@torch.no_grad()
def sample_smooth_ddim(
    model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: Optional[dict] = None,
    callback=None,
    disable: Optional[bool] = None,
    smooth: Optional[SmoothNoise] = None,
) -> torch.Tensor:
    """DDIM (eta 0) with the training-free noise correction of SmoothVideo (Eq. 5).

    SmoothVideo: Smooth Video Synthesis with Noise Constraints on Diffusion Models for
    One-shot Video Tuning (Peng et al.), Sec. 3.5, Eq. 5: the post-CFG noise difference of
    adjacent frames is pulled towards C(t, t_prev) / lambda1 times their latent difference,
    which keeps the frames of a training-free (e.g. per-frame InstructPix2Pix) edit smooth.

    At step i the model's denoised estimate gives eps = (x - denoised) / sigma; where `smooth`
    is active (smooth.is_active(i, n) and lambda3 > 0) eps is corrected by
    `correct_noise_sigma_space`, prev being the next sigma of `sigmas`; then
    x <- x + eps * (sigma_next - sigma), the DDIM step in sigma space. Without an active
    correction this is exactly k-diffusion's `sample_euler` (ComfyUI's "ddim" sampler).

    Args:
        model: model(x, sigma * s_in, **extra_args) -> denoised, post-CFG (ComfyUI's wrapper).
        x: the noised latents at sigmas[0], (f, c, h, w): the frames of ONE video as the batch.
        sigmas: decreasing noise levels, 1-D, usually ending in 0.
        extra_args, callback, disable: as every k-diffusion sampler; callback receives
            {"x", "i", "sigma", "sigma_hat", "denoised"}, denoised being x - sigma * eps of the
            corrected eps (previews show what the step moves towards).
        smooth: the Eq. 5 settings; None or lambda3 = 0 is plain DDIM.

    Returns the latents at sigmas[-1]. Raises ValueError before the first model call when
    the correction is active but there are fewer than 2 frames or the sigmas do not decrease,
    and after the last when the corrected sampling ended in NaN or inf (a model that predicted
    them; checked once, as a GPU would wait for a check at every step).
    """
    extra_args = {} if extra_args is None else extra_args
    num_steps = len(sigmas) - 1
    active = [
        smooth is not None and smooth.lambda3 > 0 and smooth.is_active(i, num_steps) for i in range(num_steps)
    ]
    if any(active):
        require_video_frames(x, SAMPLER_NAME)
        levels = sigmas.tolist()  # the one host read of the sigmas, before the first step
        require_decreasing(levels, [i for i in range(num_steps) if active[i]], SAMPLER_NAME)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(num_steps, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if active[i]:
            denoised = correct_denoised(x, denoised, levels[i], levels[i + 1], smooth)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        # k-diffusion's Euler step, operation for operation (ComfyUI's "ddim" sampler).
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    if any(active):  # once, not at every step: a NaN stays NaN to the end
        require_finite_samples(x)
    return x
