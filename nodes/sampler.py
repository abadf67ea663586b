"""Sampling nodes for training-free video editing: the Smooth Noise Sampler (Eq. 5) and a
NOISE source that gives every frame the same seed noise (the paper's setting)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_sampling
import comfy.samplers

from ..smooth_core import checks, memory
from ..smooth_core.ksampling import sample_smooth_ddim
from ..smooth_core.sample import SmoothNoise
from .common import CATEGORY, NODE_PREFIX, pixel_size
from .model_checks import prediction_name, schedule_name


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
    """`sample_smooth_ddim` as a KSAMPLER function: refuses flow models, explains running out of memory."""
    sampling = model.inner_model.inner_model.model_sampling
    if not isinstance(sampling, comfy.model_sampling.EPS):
        raise ValueError(
            f"the Smooth Noise Sampler works on noise-prediction diffusion models (SD1.x, InstructPix2Pix), "
            f"but this MODEL samples as a flow model ({prediction_name(sampling)} on {schedule_name(sampling)}): "
            "remove the ModelSampling node "
            "or use a stock sampler"
        )
    if smooth is not None and smooth.lambda3 > 0:  # a video; with lambda3 = 0 this is ComfyUI's ddim
        require_matching_source_frames(getattr(model.inner_model, "conds", None) or {}, x)
    advice = (
        "use fewer frames or a lower resolution (Select Video Frames); with Cross-frame Attention, "
        "a lower chunk_size runs fewer frames per UNet call"
    )
    with memory.explain_out_of_memory(f"sampling {checks.frames(x.shape[0])} of {pixel_size(x)}", advice):
        return sample_smooth_ddim(model, x, sigmas, *args, smooth=smooth, **kwargs)


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
            inputs=[
                io.Float.Input(
                    "lambda1", default=1000.0, min=1.0, max=1e6, step=10.0,
                    tooltip="Divisor of C in Eq. 5 (paper: 1000): how much of the frames' latent difference "
                    "the corrected noise keeps.",
                ),
                io.Float.Input(
                    "lambda3", default=0.5, min=0.0, max=1.0, step=0.05,
                    tooltip="Correction strength (paper: 0.5); 0 turns the correction off (plain DDIM), "
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
            ],
            outputs=[
                io.Sampler.Output(
                    display_name="sampler",
                    tooltip="A SAMPLER for SamplerCustom / SamplerCustomAdvanced (use the ddim_uniform scheduler).",
                )
            ],
        )

    @classmethod
    def execute(cls, lambda1, lambda3, start_percent, end_percent) -> io.NodeOutput:
        for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
            if not 0.0 <= value <= 1.0:  # NaN over the API (ComfyUI's min/max checks let it through)
                raise ValueError(f"{name} must be a number from 0 to 1 (a fraction of the steps), got {value}")
        if not start_percent <= end_percent:
            raise ValueError(
                f"start_percent ({start_percent}) is after end_percent ({end_percent}): "
                "the correction is active from start_percent up to end_percent of the steps"
            )
        smooth = SmoothNoise(lambda1=lambda1, lambda3=lambda3, start=start_percent, end=end_percent)
        # inpaint_options as ComfyUI's own "ddim" sampler, so that masked sampling matches it too.
        sampler = comfy.samplers.KSAMPLER(
            smooth_ddim_in_comfy, extra_options={"smooth": smooth}, inpaint_options={"random": True}
        )
        return io.NodeOutput(sampler)


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


NODES = [SmoothNoiseSampler, SameNoiseForAllFrames]
