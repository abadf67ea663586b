"""Input checks shared by the core's public functions.

Each raises ValueError with a message that says what the caller should change, before
any heavy work starts.
"""

from __future__ import annotations

import torch


def frames(count: int) -> str:
    """'1 frame', '2 frames': a frame count in a message."""
    return f"{count} frame" + ("" if count == 1 else "s")


def require_video(name: str, video: torch.Tensor, min_frames: int, why: str) -> None:
    """A (b, f, c, h, w) tensor with at least `min_frames` frames; `why` names the need."""
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(video).__name__}")
    if video.dim() != 5:
        raise ValueError(
            f"{name} must have shape (batch, frames, channels, height, width), got {tuple(video.shape)}"
        )
    frames = video.shape[1]
    if frames < min_frames:
        raise ValueError(
            f"{why} needs at least {min_frames} frames, but {name} has {frames}: "
            f"give the video more frames"
        )


def require_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape"
        )


def require_per_video(name: str, values: torch.Tensor, batch: int) -> None:
    """One value per video: shape (b,)."""
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.shape[0] != batch:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"{name} must hold one value per video, shape ({batch},), got {shape}")


def require_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(
            f"{name} contains NaN or inf values; check the inputs upstream "
            f"(a diverged model, a broken VAE decode, or fp16 overflow)"
        )


def require_nonnegative_finite(name: str, value: float) -> None:
    value = float(value)
    if not (value >= 0.0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32: half inputs are computed in float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def require_matching_state(own: dict, given: dict) -> None:
    """`given` has exactly the keys of `own`, each with its shape: the trainable tensors of one
    video model (another base model has other shapes, another kind of model other keys)."""
    missing, unexpected = sorted(own.keys() - given.keys()), sorted(given.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"trainable state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong_shape = [k for k, v in given.items() if v.shape != own[k].shape]
    if wrong_shape:
        raise ValueError(f"trainable state dict has wrong shapes at {wrong_shape[:5]} (another base model?)")
