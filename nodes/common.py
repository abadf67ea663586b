"""What every node of the pack shares: the category and ComfyUI progress/interrupt plumbing."""

from __future__ import annotations

import comfy.model_management
import comfy.utils

CATEGORY = "SmoothVideo"
NODE_PREFIX = "SmoothVideo_"


class Progress:
    """A ComfyUI progress bar that also raises ComfyUI's interrupt between units of work."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def step(self, done: int = 1) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(done)
