"""What kind of model a MODEL is, in ComfyUI's terms: shared by the sampler and the video-model
nodes (this module needs no diffusers, so the sampler loads without it)."""

from __future__ import annotations

import torch

import comfy.model_sampling


def prediction_name(sampling) -> str:
    """What a MODEL's sampling object predicts: the class that defines its calculate_denoised
    (ComfyUI's EPS, V_PREDICTION, CONST, X0, ...; LCM from ModelSamplingDiscrete)."""
    for cls in type(sampling).__mro__:
        if "calculate_denoised" in vars(cls):
            return cls.__name__
    return type(sampling).__name__


def schedule_name(sampling) -> str:
    """The noise schedule of a MODEL's sampling object: ComfyUI's class for it
    (ModelSamplingDiscrete, ModelSamplingDiscreteFlow, ...)."""
    for cls in type(sampling).__mro__:
        if cls.__module__ == comfy.model_sampling.__name__ and issubclass(cls, torch.nn.Module):
            return cls.__name__
    return type(sampling).__name__
