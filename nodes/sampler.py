"""Sampling nodes for training-free video editing: the Smooth Noise Sampler (Eq. 5) and a
NOISE source that gives every frame the same seed noise (the paper's setting)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.patcher_extension
import comfy.samplers

from ..smooth_core import checks, memory
from ..smooth_core.ksampling import (
    correct_denoised,
    require_decreasing,
    require_video_frames,
    sample_smooth_ddim,
    schedule_step,
)
from ..smooth_core.sample import SmoothNoise
from .common import CATEGORY, NODE_PREFIX, pixel_size
from .model_checks import (
    SMOOTH_NOISE_KEY,
    has_smooth_noise_patch,
    require_noise_prediction_sampling,
)


def require_matching_source_frames(conds: dict, x: torch.Tensor) -> None:
    """InstructPix2Pix conditions each frame on its source frame; with another frame count
    ComfyUI would silently stretch or thin the source frames to the LATENT's batch."""
    for name, entries in conds.items():
        for cond in entries:
            source = cond.get("concat_latent_image")
            if isinstance(source, torch.Tensor) and source.shape[0] != x.shape[0]:
                raise ValueError(
                    f"the {name} conditioning carries {source.shape[0]} source frames (InstructPixToPixConditioning) "
                    f"but the LATENT has {x.shape[0]}: sample the LATENT output of that InstructPixToPixConditioning, "
                    "or give both the same frames"
                )


def smooth_ddim_in_comfy(model, x, sigmas, *args, smooth: SmoothNoise | None = None, **kwargs):
    """`sample_smooth_ddim` as a KSAMPLER function: refuses flow models and a MODEL that already
    carries Smooth Noise (Eq. 5), explains running out of memory."""
    require_noise_prediction_sampling(model.inner_model.inner_model.model_sampling, "the Smooth Noise Sampler",
                                      "use a stock sampler")
    if smooth is not None and smooth.lambda3 > 0:  # a video; with lambda3 = 0 this is ComfyUI's ddim
        guider = model.inner_model
        if has_smooth_noise_patch(guider.model_options.get("transformer_options", {}).get("wrappers", {})):
            raise ValueError(
                "this MODEL carries Smooth Noise (Eq. 5) already, and the Smooth Noise Sampler would apply Eq. 5 a "
                "second time: sample it with the stock ddim sampler (the same result), or remove Smooth Noise (Eq. 5)"
            )
        require_matching_source_frames(getattr(guider, "conds", None) or {}, x)
    with memory.explain_out_of_memory(f"sampling {checks.frames(x.shape[0])} of {pixel_size(x)}", MEMORY_ADVICE):
        return sample_smooth_ddim(model, x, sigmas, *args, smooth=smooth, **kwargs)


MEMORY_ADVICE = (
    "use fewer frames or a lower resolution (Select Video Frames); with Cross-frame Attention, "
    "a lower chunk_size runs fewer frames per UNet call"
)


def smooth_settings(lambda1, lambda3, start_percent, end_percent) -> SmoothNoise:
    """The Eq. 5 settings of the two nodes, with messages in the nodes' own terms."""
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not 0.0 <= value <= 1.0:  # NaN over the API (ComfyUI's min/max checks let it through)
            raise ValueError(f"{name} must be a number from 0 to 1 (a fraction of the steps), got {value}")
    if not start_percent <= end_percent:
        raise ValueError(
            f"start_percent ({start_percent}) is after end_percent ({end_percent}): "
            "the correction is active from start_percent up to end_percent of the steps"
        )
    return SmoothNoise(lambda1=lambda1, lambda3=lambda3, start=start_percent, end=end_percent)


def smooth_inputs() -> list:
    """lambda1, lambda3 and the active step range: the inputs both Eq. 5 nodes share."""
    return [
        io.Float.Input(
            "lambda1", default=1000.0, min=1.0, max=1e6, step=10.0,
            tooltip="Divisor of C in Eq. 5 (paper: 1000): how much of the frames' latent difference "
            "the corrected noise keeps.",
        ),
        io.Float.Input(
            "lambda3", default=0.5, min=0.0, max=1.0, step=0.05,
            tooltip="Correction strength (paper: 0.5); 0 turns the correction off, "
            "1 replaces each frame's noise difference to the next frame entirely.",
        ),
        io.Float.Input(
            "start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
            tooltip="First sampling step with the correction, as a fraction of the steps "
            "(0 = from the noisiest step).",
        ),
        io.Float.Input(
            "end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
            tooltip="The correction stops at this fraction of the steps (1 = up to the last step).",
        ),
    ]


class SmoothNoiseSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "SmoothNoiseSampler",
            display_name="Smooth Noise Sampler",
            category=CATEGORY,
            description=(
                "DDIM (eta 0) with SmoothVideo's training-free noise correction (Eq. 5): at each step the "
                "guided noise prediction of every frame is pulled towards the next frame's, which smooths "
                "per-frame edits (e.g. InstructPix2Pix on a video's frames). Frames are the LATENT batch of one "
                "video. For SamplerCustom / SamplerCustomAdvanced with the ddim_uniform scheduler; with "
                "lambda3 = 0 it is ComfyUI's ddim sampler. Epsilon-prediction SD1.x models."
            ),
            inputs=smooth_inputs(),
            outputs=[
                io.Sampler.Output(
                    display_name="sampler",
                    tooltip="A SAMPLER for SamplerCustom / SamplerCustomAdvanced (use the ddim_uniform scheduler).",
                )
            ],
        )

    @classmethod
    def execute(cls, lambda1, lambda3, start_percent, end_percent) -> io.NodeOutput:
        smooth = smooth_settings(lambda1, lambda3, start_percent, end_percent)
        # inpaint_options as ComfyUI's own "ddim" sampler, so that masked sampling matches it too.
        sampler = comfy.samplers.KSAMPLER(
            smooth_ddim_in_comfy, extra_options={"smooth": smooth}, inpaint_options={"random": True}
        )
        return io.NodeOutput(sampler)


PATCH_NAME = "Smooth Noise (Eq. 5)"


class SmoothNoisePatch:
    """Eq. 5 on the guided prediction of every sampler step: a PREDICT_NOISE wrapper, so that it
    sees the guider's final denoised estimate, after CFG and every post-CFG function, whichever
    guider made it (CFGGuider, DualCFGGuider, Basic).

    The step's place in the schedule comes from `transformer_options["sample_sigmas"]`, which
    ComfyUI's guiders set for every sampling; C is taken from the call's sigma and the next
    level of that schedule below it (`ksampling.schedule_step`)."""

    def __init__(self, smooth: SmoothNoise):
        self.smooth = smooth

    def __call__(self, executor, x, timestep, model_options, seed=None):
        levels = model_options.get("transformer_options", {}).get("sample_sigmas")
        if levels is None:
            raise ValueError(
                f"{PATCH_NAME}: this sampling does not pass the sampler's sigmas (transformer_options "
                "sample_sigmas, set by ComfyUI's own guiders), so the step's next noise level is unknown: "
                "sample with a stock guider (CFGGuider, DualCFGGuider, BasicGuider, KSampler) or use the Smooth "
                "Noise Sampler"
            )
        levels = levels.tolist()
        sigma = float(timestep.flatten()[0])
        place = schedule_step(levels, sigma)
        active = place is not None and self.smooth.lambda3 > 0 and self.smooth.is_active(place[0], len(levels) - 1)
        if active:  # checked before the model call, as the sampler does
            require_noise_prediction_sampling(executor.class_obj.inner_model.model_sampling, PATCH_NAME,
                                              f"remove {PATCH_NAME}")
            require_video_frames(x, PATCH_NAME)
            require_decreasing(levels, range(len(levels) - 1), PATCH_NAME)
            require_matching_source_frames(getattr(executor.class_obj, "conds", None) or {}, x)
        denoised = executor(x, timestep, model_options, seed)
        if not active:
            return denoised
        return correct_denoised(x, denoised, sigma, place[1], self.smooth)


class SmoothNoiseModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "SmoothNoise",
            display_name=PATCH_NAME,
            category=CATEGORY,
            description=(
                "SmoothVideo's training-free noise correction (Eq. 5) as a patch on the MODEL, for any sampler: at "
                "each step the guided noise prediction of every frame is pulled towards the next frame's. Frames are "
                "the LATENT batch of one video. It acts on the final guided prediction (after CFG, DualCFGGuider's "
                "two scales and every post-CFG patch, whatever their order), with C from the step's sigma and the "
                "next of the sampler's sigmas. With the ddim sampler it is the Smooth Noise Sampler; other samplers "
                "are an extension beyond the paper. For sampling only: tuning and DDIM inversion refuse it."
            ),
            inputs=[io.Model.Input("model", tooltip="The MODEL to sample a video's frames with.")] + smooth_inputs(),
            outputs=[io.Model.Output(tooltip="The MODEL with Eq. 5 applied at every sampling step in the range.")],
        )

    @classmethod
    def execute(cls, model, lambda1, lambda3, start_percent, end_percent) -> io.NodeOutput:
        smooth = smooth_settings(lambda1, lambda3, start_percent, end_percent)
        require_noise_prediction_sampling(model.get_model_object("model_sampling"), PATCH_NAME, f"remove {PATCH_NAME}")
        if has_smooth_noise_patch(model.wrappers):
            raise ValueError(
                f"this MODEL carries {PATCH_NAME} already: one is enough (a second would correct every step twice); "
                "remove one of the two nodes"
            )
        patched = model.clone()
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.PREDICT_NOISE, SMOOTH_NOISE_KEY, SmoothNoisePatch(smooth)
        )
        return io.NodeOutput(patched)


class SameNoise:
    """A NOISE whose every latent of the batch is the same seeded draw of one frame."""

    def __init__(self, seed: int):
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if samples.is_nested:
            raise ValueError("Same Noise For All Frames needs a plain LATENT batch, not a nested (multi-part) latent")
        generator = torch.Generator("cpu").manual_seed(self.seed)
        frame = torch.randn((1, *samples.shape[1:]), dtype=samples.dtype, layout=samples.layout, generator=generator)
        return frame.expand(samples.shape).clone()


class SameNoiseForAllFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "SameNoiseForAllFrames",
            display_name="Same Noise For All Frames",
            category=CATEGORY,
            description=(
                "A NOISE for SamplerCustomAdvanced that gives every frame of the LATENT batch the same seeded "
                "noise, as SmoothVideo (and Text2Video-Zero) do for training-free video editing."
            ),
            inputs=[
                io.Int.Input(
                    "noise_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                    tooltip="Seed of the one frame of noise that every frame starts from.",
                ),
            ],
            outputs=[io.Noise.Output(display_name="noise", tooltip="The same noise for every frame, for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, noise_seed) -> io.NodeOutput:
        return io.NodeOutput(SameNoise(noise_seed))


NODES = [SmoothNoiseSampler, SmoothNoiseModel, SameNoiseForAllFrames]
