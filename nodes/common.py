"""What every node of the pack shares: the category and ComfyUI progress/interrupt plumbing."""

from __future__ import annotations

import comfy.model_management
import comfy.utils

CATEGORY = "SmoothVideo"
NODE_PREFIX = "SmoothVideo_"


def video_frames_latent(latent: dict, node: str):
    """The LATENT's samples as one video, (frames, channels, height, width): frames are the batch."""
    samples = latent["samples"]
    if samples.is_nested or samples.dim() != 4:
        raise ValueError(
            f"{node}: expected an image LATENT batch (frames, channels, height, width), got "
            f"{'a nested latent' if samples.is_nested else tuple(samples.shape)}: VAE Encode the video's frames"
        )
    return samples


def pixel_size(latent) -> str:
    """"WxH px" of the frames behind a latent tensor (the VAE works on 8-pixel blocks)."""
    return f"{latent.shape[-1] * 8}x{latent.shape[-2] * 8} px"


def latent_size(latent) -> str:
    """"HxW" of a latent tensor's frames, as tuned weights record it (metadata "latent_size")."""
    return f"{latent.shape[-2]}x{latent.shape[-1]}"


def single_prompt(conditioning, node: str, input_name: str):
    """The one prompt embedding (1, tokens, dim) of a CONDITIONING: these nodes take one prompt per video."""
    if len(conditioning) != 1:
        raise ValueError(
            f"{node}: {input_name} holds {len(conditioning)} conditionings (from Conditioning Combine?) but this "
            "node takes one prompt: connect a single CLIP Text Encode"
        )
    embedding = conditioning[0][0]
    if embedding.dim() != 3 or embedding.shape[0] != 1:
        raise ValueError(
            f"{node}: {input_name} must be one prompt embedding of shape (1, tokens, dim), got "
            f"{tuple(embedding.shape)}: connect a single CLIP Text Encode"
        )
    return embedding


class Progress:
    """A ComfyUI progress bar that also raises ComfyUI's interrupt between units of work."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def step(self, done: int = 1) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(done)
