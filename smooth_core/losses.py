"""The noise-constraint ("smooth") losses of the paper, Eq. 3 and Eq. 4.

Frames lie along dim 1 of (b, f, c, h, w) tensors. With D(z)[n] = z[n] - z[n+1] and the
cross-frame difference D2(z)[n] = 2 z[n] - z[n-1] - z[n+1] (centre frames n = 1..F-2):

    native       |D(eps)  - (C / lambda1) D(x_t)|
    cross_frame  |D2(eps) - (C / lambda1) D2(x_t)|     (Eq. 3, the paper's default)
    simple       |D2(eps)|                            (the published code's "simple manner")
    simple_first |D(eps)|                             (the paper's text for the simple form)
"""

from __future__ import annotations

import torch

from . import checks

VARIANTS = ("cross_frame", "native", "simple", "simple_first")
REDUCTIONS = ("l1", "l2")
_MIN_FRAMES = {"cross_frame": 3, "simple": 3, "native": 2, "simple_first": 2}


def first_difference(z: torch.Tensor) -> torch.Tensor:
    """D(z)[n] = z[n] - z[n+1] along the frame axis of (b, f, ...): (b, f-1, ...)."""
    return z[:, :-1] - z[:, 1:]


def cross_frame_difference(z: torch.Tensor) -> torch.Tensor:
    """D2(z)[n] = 2 z[n] - z[n-1] - z[n+1] for n = 1..F-2 of (b, f, ...): (b, f-2, ...)."""
    return 2.0 * z[:, 1:-1] - z[:, :-2] - z[:, 2:]


def min_frames(variant: str) -> int:
    """Frames the variant needs (3 for the second-difference forms, 2 otherwise)."""
    if variant not in _MIN_FRAMES:
        raise ValueError(f"unknown smooth loss variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return _MIN_FRAMES[variant]


def smooth_loss_unchecked(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    c: torch.Tensor,
    lambda1: float,
    variant: str,
    reduction: str,
) -> torch.Tensor:
    """`smooth_loss` without the input checks (they sync the GPU): for the training loop
    after its inputs were checked once."""
    dtype = checks.compute_dtype(eps, x_t)
    eps = eps.to(dtype)
    if variant in ("native", "simple_first"):
        diff = first_difference
    else:
        diff = cross_frame_difference
    residual = diff(eps)
    if variant in ("native", "cross_frame"):
        scale = (c.to(device=eps.device, dtype=dtype) / lambda1).view(-1, *([1] * (eps.dim() - 1)))
        residual = residual - scale * diff(x_t.to(dtype))
    if reduction == "l1":
        return residual.abs().mean()
    return residual.square().mean()


def smooth_loss(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    c: torch.Tensor,
    lambda1: float = 1000.0,
    variant: str = "cross_frame",
    reduction: str = "l1",
) -> torch.Tensor:
    """The smooth loss L_noise (Eq. 3 and its variants, see the module docstring).

    Args:
        eps: predicted noise, (b, f, c, h, w).
        x_t: the noisy (variance-preserving, scaled) latents the prediction was made from,
            same shape as eps; unused by the "simple" variants but checked all the same.
        c: the C coefficient of Eq. 2, one per video, shape (b,).
        lambda1: the divisor of C (1000 in the paper).
        variant: "cross_frame" (default), "native", "simple" or "simple_first".
        reduction: "l1" (mean absolute value, as the published code) or "l2" (mean square).

    Returns a 0-dim tensor in float32 (float64 for float64 inputs).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    needed = min_frames(variant)
    checks.require_video("eps", eps, needed, f"the {variant} smooth loss")
    checks.require_same_shape("eps", eps, "x_t", x_t)
    checks.require_per_video("c", c, eps.shape[0])
    if not (float(lambda1) > 0.0 and float(lambda1) != float("inf")):
        raise ValueError(f"lambda1 must be a finite number > 0, got {lambda1}")
    checks.require_finite("eps", eps)
    checks.require_finite("x_t", x_t)
    checks.require_finite("c", c)
    return smooth_loss_unchecked(eps, x_t, c, float(lambda1), variant, reduction)


def total_loss(
    eps: torch.Tensor,
    noise: torch.Tensor,
    x_t: torch.Tensor,
    c: torch.Tensor,
    lambda1: float = 1000.0,
    lambda2: float = 0.2,
    variant: str = "cross_frame",
    reduction: str = "l1",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4: L = MSE(eps, noise) + lambda2 * L_noise. lambda2 = 0 is the Tune-A-Video baseline.

    Returns (total, mse, smooth), each a 0-dim float32 tensor; the smooth term is computed
    (for logging) even when lambda2 = 0, but then without gradient and left out of the total,
    so the baseline's backward pass is Tune-A-Video's. No input checks: the tuning loop checks once.
    """
    mse = torch.nn.functional.mse_loss(eps.float(), noise.float())
    if lambda2 == 0:
        with torch.no_grad():
            smooth = smooth_loss_unchecked(eps.detach(), x_t, c, lambda1, variant, reduction)
        return mse, mse, smooth
    smooth = smooth_loss_unchecked(eps, x_t, c, lambda1, variant, reduction)
    return mse + lambda2 * smooth, mse, smooth
