"""What kind of model a MODEL is, in ComfyUI's terms, and the checks the nodes make of it before
any heavy work: shared by the sampler, the video-model and the tuning nodes."""

from __future__ import annotations

import torch

import comfy.model_sampling
import comfy.patcher_extension

from ..smooth_core import schedule


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


def require_sd1_eps(model) -> None:
    """Only epsilon-prediction SD1.x UNets are supported: say so before any heavy work.

    The prediction type is read from the MODEL's effective sampling object, so a stock
    ModelSamplingDiscrete (v_prediction, lcm, x0) or ModelSamplingSD3 (flow) node in front
    counts too, not only what the checkpoint was detected as.
    """
    base = model.model
    name = type(base.model_config).__name__
    sampling = model.get_model_object("model_sampling")
    epsilon = type(sampling).calculate_denoised is comfy.model_sampling.EPS.calculate_denoised
    if not epsilon or not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete):
        kind = prediction_name(sampling)
        if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete):
            kind += f" on {schedule_name(sampling)}"
        raise ValueError(
            f"this MODEL ({name}) samples as {kind}; SmoothVideo's tuning and DDIM inversion need "
            "epsilon prediction on the discrete SD1.x schedule (SD1.5, InstructPix2Pix): remove the "
            "ModelSampling node (or use such a checkpoint)"
        )
    if base.model_config.unet_config.get("context_dim") != 768 or not hasattr(base.diffusion_model, "input_blocks"):
        raise ValueError(
            f"{name} is not an SD1.x UNet (SDXL, SD2 and flow models are not supported yet): "
            "use an SD1.5 or InstructPix2Pix checkpoint"
        )


def require_sd15_schedule(model, node: str) -> None:
    """Tuning draws its noise from, and DDIM inversion steps along, SD1.5's schedule: a MODEL
    whose sigmas differ (ModelSamplingDiscrete with zsnr on) would mix two schedules."""
    sigmas = model.get_model_object("model_sampling").sigmas.detach().cpu().double()
    expected = schedule.alpha_bar_to_sigma(schedule.sd15_alphas_cumprod())
    if sigmas.shape != expected.shape or not torch.allclose(sigmas, expected, rtol=1e-3, atol=0):
        raise ValueError(
            f"{node}: this MODEL's noise schedule is not SD1.5's (zero terminal SNR, zsnr, from a ModelSamplingDiscrete "
            "node?), but tuning and DDIM inversion follow SD1.5's: remove that node or set zsnr off"
        )


SMOOTH_NOISE_KEY = "smoothvideo_eq5"  # the key of the Smooth Noise (Eq. 5) patch among a MODEL's wrappers


def has_smooth_noise_patch(wrappers: dict) -> bool:
    """Whether a MODEL's wrappers (ModelPatcher.wrappers, or a guider's
    model_options["transformer_options"]["wrappers"]) carry the Smooth Noise (Eq. 5) patch."""
    return bool(wrappers.get(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, {}).get(SMOOTH_NOISE_KEY))


def require_no_smooth_noise_patch(model, node: str) -> None:
    """The Eq. 5 patch corrects sampling steps: in tuning or inversion it would change the noise
    prediction the loop works on."""
    if has_smooth_noise_patch(model.wrappers):
        raise ValueError(
            f"{node}: this MODEL carries Smooth Noise (Eq. 5), a correction of sampling steps: connect "
            f"{node} to the MODEL before Smooth Noise (Eq. 5), and Smooth Noise to the sampler's MODEL"
        )


def require_noise_prediction_sampling(sampling, who: str, fix: str) -> None:
    """Eq. 5 recovers the noise as (x - denoised) / sigma: true of ComfyUI's EPS and V_PREDICTION
    models (x = x0 + sigma * eps), not of flow models."""
    if not isinstance(sampling, comfy.model_sampling.EPS):
        raise ValueError(
            f"{who} works on noise-prediction diffusion models (SD1.x, InstructPix2Pix), "
            f"but this MODEL samples as a flow model ({prediction_name(sampling)} on {schedule_name(sampling)}): "
            f"remove the ModelSampling node or {fix}"
        )


def require_no_sampling_guidance(model, node: str, why: str, fix: str) -> None:
    """Guidance that works on the sampler's CFG (PerturbedAttentionGuidance, Self-Attention Guidance,
    CFG rescales: post-CFG, CFG and pre-CFG functions) has no meaning in the pack's loops, which
    run the model without CFG (tuning, DDIM inversion): there it would fail, change the loss
    unseen, or be skipped without a word."""
    options = model.model_options
    if options.get("sampler_post_cfg_function") or options.get("sampler_cfg_function") \
            or options.get("sampler_pre_cfg_function"):
        raise ValueError(
            f"{node}: this MODEL carries sampling guidance (a node such as PerturbedAttentionGuidance, "
            f"SelfAttentionGuidance or RescaleCFG changes the sampler's CFG), which has no meaning here ({why}, "
            f"without CFG): {fix}"
        )
