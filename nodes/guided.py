"""ComfyUI's own model call for the pack's loops (DDIM inversion, tuning): a guider prepares the
sampling (loads the models and whatever the conditioning needs, such as a ControlNet, and
processes the conditioning), then hands the model call to a 'sampler' that runs the loop."""

from __future__ import annotations

import functools

import torch

import comfy.samplers
from comfy_extras.nodes_custom_sampler import Guider_Basic


class _LoopSampler(comfy.samplers.Sampler):
    """A sampler whose sampling is `body(predict, models)`: predict(x, sigma) -> denoised (no CFG),
    models the ModelPatchers the guider loaded for it (the MODEL, ControlNets...)."""

    def __init__(self, body):
        self.body = body

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.body(functools.partial(model_wrap, **extra_args), list(getattr(model_wrap, "loaded_models", [])))
        return latent_image


def run_with_model_call(model, conditioning, video_shape: tuple, body) -> None:
    """Calls `body(predict, models)` inside a guider's sampling of `model` under `conditioning`,
    where predict(x, sigma) is ComfyUI's model call on ((b f), c, h, w) latents in its sampling
    space (x = x_vp * sqrt(1 + sigma^2)) at one sigma per frame, returning the denoised latents,
    and models are the ModelPatchers the guider loaded (the MODEL, its ControlNets, ...).

    video_shape: (b, f, c, h, w) of the videos the loop works on (the guider prepares for it)."""
    guider = Guider_Basic(model)
    guider.set_conds(conditioning)
    latent = torch.zeros(video_shape[0] * video_shape[1], *video_shape[2:])
    sampling = model.get_model_object("model_sampling")
    sigmas = torch.tensor([float(sampling.sigma_max), 0.0])
    guider.sample(torch.zeros_like(latent), latent, _LoopSampler(body), sigmas, disable_pbar=True, seed=0)


def predict_eps(predict, x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The noise prediction for variance-preserving latents x_t ((b f), c, h, w) at one sigma per
    frame ((b f),), recovered from ComfyUI's model call (`run_with_model_call`'s predict):
    x = x_t * sqrt(1 + sigma^2), eps = (x - denoised) / sigma. A float64 sigma keeps the scaling
    exact: ComfyUI divides the input by sqrt(1 + sigma^2) with the sigma it is given."""
    scale = sigma.view(-1, 1, 1, 1)
    x = x_t * (1.0 + scale**2).sqrt()
    return (x - predict(x, sigma)) / scale
