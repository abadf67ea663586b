"""Training-free noise correction of the paper, Eq. 5."""

from __future__ import annotations

import torch

from . import checks
from .losses import first_difference


def correct_noise(
    eps: torch.Tensor,
    x_t: torch.Tensor,
    c: torch.Tensor,
    lambda1: float = 1000.0,
    lambda3: float = 0.5,
    check_finite: bool = True,
) -> torch.Tensor:
    """Eq. 5: eps[n] <- eps[n] - lambda3 * (D(eps)[n] - (C / lambda1) D(x_t)[n]), n = 0..F-2.

    Every pair uses the uncorrected eps (one vectorised step); the last frame is unchanged.

    Args:
        eps: the (post-CFG) noise prediction, (b, f, c, h, w).
        x_t: the variance-preserving latents at the current step, same shape.
        c: C of Eq. 2 for (current step, next sampler step), one per video, shape (b,).
        lambda1: divisor of C (1000); lambda3: correction strength (0.5; 0 is the identity).
        check_finite: refuse NaN or inf in eps and x_t. The test reads both tensors on the host,
            which makes a GPU wait for the step's model call: the samplers pass False and check
            their result once, at the end.

    Returns the corrected eps, same shape and dtype (computed in float32 or float64).
    """
    checks.require_video("eps", eps, 2, "the noise correction (Eq. 5)")
    checks.require_same_shape("eps", eps, "x_t", x_t)
    checks.require_per_video("c", c, eps.shape[0])
    checks.require_nonnegative_finite("lambda3", lambda3)
    if not (float(lambda1) > 0.0 and float(lambda1) != float("inf")):
        raise ValueError(f"lambda1 must be a finite number > 0, got {lambda1}")
    if check_finite:
        checks.require_finite("eps", eps)
        checks.require_finite("x_t", x_t)
    dtype = checks.compute_dtype(eps, x_t)
    e = eps.to(dtype)
    x = x_t.to(dtype)
    scale = (c.to(device=e.device, dtype=dtype) / float(lambda1)).view(-1, 1, 1, 1, 1)
    residual = first_difference(e) - scale * first_difference(x)
    corrected = e.clone()
    corrected[:, :-1] -= float(lambda3) * residual
    return corrected.to(eps.dtype)
