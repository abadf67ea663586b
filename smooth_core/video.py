"""Frame selection for videos held as image batches (f, h, w, c), as ComfyUI passes them."""

from __future__ import annotations

import torch

from .checks import frames as n_frames


def select_frames(frames: torch.Tensor, start: int = 0, count: int = 0, stride: int = 1) -> torch.Tensor:
    """frames[start : start + count*stride : stride]; count = 0 takes every frame from start on.

    frames: (f, h, w, c). Raises ValueError for an empty video or a selection with no frame.
    """
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[0] == 0:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"expected a non-empty batch of frames (frames, height, width, channels), got {shape}")
    total = frames.shape[0]
    if start < 0 or stride < 1 or count < 0:
        raise ValueError(f"start must be >= 0, stride >= 1 and count >= 0 (got start={start}, stride={stride}, count={count})")
    if start >= total:
        raise ValueError(f"start={start} is past the end of the video ({n_frames(total)}); lower start")
    stop = total if count == 0 else min(total, start + count * stride)
    selected = frames[start:stop:stride]
    if count and selected.shape[0] < count:
        raise ValueError(
            f"asked for {n_frames(count)} from frame {start} every {stride}, but the video has only "
            f"{n_frames(total)} ({selected.shape[0]} available); lower count or stride"
        )
    return selected


def crop_to_multiple(frames: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Centre-crops (f, h, w, c) frames so that h and w are multiples of `multiple` (the VAE's 8)."""
    h, w = frames.shape[1:3]
    new_h, new_w = h - h % multiple, w - w % multiple
    if new_h == 0 or new_w == 0:
        raise ValueError(f"frames of {w}x{h} are smaller than {multiple} pixels; use larger frames")
    top, left = (h - new_h) // 2, (w - new_w) // 2
    return frames[:, top : top + new_h, left : left + new_w]
