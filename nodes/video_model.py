"""Video model nodes: Inflate UNet (Tune-A-Video), Cross-frame Attention (Text2Video-Zero) and
DDIM Invert Video. A video MODEL is a clone of the input MODEL carrying patches on ComfyUI's own
UNet (`video_patches`): stock samplers run it, and LoRAs, attention and block patches and
ControlNets act on it as on the plain model.
"""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io

import comfy.model_management
import folder_paths

from ..smooth_core import checks, invert, memory, sample, video_layers
from . import video_patches
from .common import CATEGORY, NODE_PREFIX, Progress, latent_size, pixel_size, single_prompt, video_frames_latent
from .guided import predict_eps, run_with_model_call
from .model_checks import (
    require_no_sampling_guidance,
    require_no_smooth_noise_patch,
    require_sd15_schedule,
    require_sd1_eps,
)

# Tuned weights and tuning checkpoints: ComfyUI/models/smoothvideo/
folder_paths.add_model_folder_path("smoothvideo", os.path.join(folder_paths.models_dir, "smoothvideo"))
# Only .safetensors files are tuned weights: a save's temporary file or a damaged checkpoint set
# aside is not listed (an empty set would list every file).
folder_paths.folder_names_and_paths["smoothvideo"][1].add(".safetensors")


class InflateUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "InflateUNet",
            display_name="Inflate UNet (video)",
            category=CATEGORY,
            description=(
                "Turns an SD1.5 MODEL into a video model (Tune-A-Video): self-attention looks at other frames, "
                "a temporal attention layer follows each transformer block, and (group_norm video, as published) "
                "the ResNet blocks normalise over all frames. "
                "Frames are the LATENT batch. The video model is patches on ComfyUI's own UNet: LoRAs (before or "
                "after this node), attention and block patches (PAG, FreeU...) and ControlNets act on it as on the "
                "plain model. Works in stock samplers; the input MODEL is not changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 (or InstructPix2Pix) MODEL from Load Checkpoint."),
                io.Combo.Input(
                    "attention", options=list(video_layers.ATTENTION_MODES), default="sparse_causal",
                    tooltip="sparse_causal: each frame attends to the first and the previous frame (Tune-A-Video). "
                    "cross_frame: every frame attends to the first frame (Text2Video-Zero).",
                ),
                io.Combo.Input(
                    "group_norm", options=list(video_layers.GROUP_NORM_MODES), default="video", optional=True,
                    tooltip="video: the ResNet blocks' group norms take their statistics over all frames of the video, "
                    "as Tune-A-Video's published code (its default, and the paper's). per_frame: each frame alone, so "
                    "the untuned model is exactly the image model on every frame (AnimateDiff's way).",
                ),
            ],
            outputs=[io.Model.Output(display_name="video_model", tooltip="The inflated MODEL; frames = LATENT batch.")],
        )

    @classmethod
    def execute(cls, model, attention, group_norm="video") -> io.NodeOutput:
        return io.NodeOutput(video_model(model, attention, temporal=True, group_norm=group_norm))


def video_model(model, attention: str, temporal: bool, chunk_size: int | None = None, group_norm: str | None = None,
                **design):
    """`video_patches.native_video_model` for an SD1.x epsilon MODEL (checked first)."""
    require_sd1_eps(model)
    return video_patches.native_video_model(model, attention, temporal, group_norm=group_norm, chunk_size=chunk_size,
                                            **design)


class InflateControlVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "InflateControlVideo",
            display_name="Inflate UNet (ControlVideo)",
            category=CATEGORY,
            description=(
                "Turns an SD1.5 MODEL into ControlVideo's video model (Zhao et al., thu-ml/controlvideo): every "
                "frame's self-attention looks at one key frame; a temporal attention over the frames, started from "
                "the block's own self-attention and followed by a zero-initialised 1x1 layer, runs beside it in every "
                "transformer block but the middle one; the ResNet blocks normalise over all frames. One-shot Tune "
                "then trains ControlVideo's set (attn1.to_out, attn_temp, conv_temp). The visual condition comes "
                "from stock nodes: Load ControlNet Model and Apply ControlNet on the conditioning, with one control "
                "image per frame (e.g. Canny on the frames), in tuning, in DDIM Invert Video and in the sampler. "
                "Frames are the LATENT batch; the input MODEL is not changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 MODEL from Load Checkpoint."),
                io.Int.Input(
                    "key_frame", default=0, min=0, max=4095,
                    tooltip="The frame every frame's self-attention looks at (ControlVideo: 0, the first frame). "
                    "Must be a frame of the video.",
                ),
            ],
            outputs=[io.Model.Output(display_name="video_model",
                                     tooltip="ControlVideo's video MODEL; frames = LATENT batch.")],
        )

    @classmethod
    def execute(cls, model, key_frame) -> io.NodeOutput:
        return io.NodeOutput(video_model(model, video_layers.KEY_FRAME, temporal=True, group_norm="video",
                                         design=video_patches.CONTROLVIDEO, key_frame=key_frame))


class CrossFrameAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "CrossFrameAttention",
            display_name="Cross-frame Attention (Text2Video-Zero)",
            category=CATEGORY,
            description=(
                "Training-free video model (Text2Video-Zero): every frame's self-attention looks at the video's "
                "first frame, which keeps per-frame edits (e.g. InstructPix2Pix with InstructPixToPixConditioning "
                "and DualCFGGuider) consistent. No new layers, nothing to tune. Frames are the LATENT batch; long "
                "videos run in chunks led by frame 0, which saves memory without changing the result. "
                "Works in stock samplers; the input MODEL is not changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 or InstructPix2Pix MODEL from Load Checkpoint."),
                io.Int.Input(
                    "chunk_size", default=8, min=2, max=4096,
                    tooltip="Frames per UNet call (Text2Video-Zero: 8): the first chunk is frames 0 to chunk_size-1, "
                    "each later one frame 0 and the next chunk_size-1 frames. Lower it if sampling runs out of "
                    "memory; the result stays the same.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="video_model",
                    tooltip="The MODEL with cross-frame attention to frame 0; frames = LATENT batch.",
                )
            ],
        )

    @classmethod
    def execute(cls, model, chunk_size) -> io.NodeOutput:
        return io.NodeOutput(video_model(model, "cross_frame", temporal=False, chunk_size=chunk_size))


def require_tuned_size(model, samples: torch.Tensor) -> None:
    """A tuned video MODEL inverts videos of the size it was tuned on (Tune-A-Video edits the
    video it tuned on); another size is almost always the wrong frames or the wrong weights."""
    patches = video_patches.video_patches(model)
    tuned = patches.tuned_latent_size if patches is not None else None
    if tuned is not None and tuned != latent_size(samples):
        pixels = "x".join(str(int(n) * 8) for n in tuned.split("x")[::-1])
        raise ValueError(
            f"DDIM Invert Video: this MODEL was tuned on {pixels} px frames (latents {tuned}) but the LATENT's "
            f"frames are {pixel_size(samples)}: select the frames at the size they were "
            "tuned on (Select Video Frames width/height), or tune on this size"
        )


def invert_video(model, conditioning, x0: torch.Tensor, steps: int, callback) -> torch.Tensor:
    """DDIM inversion (`invert.ddim_invert`) of variance-preserving latents x0 (1, f, c, h, w) through
    ComfyUI's model call under `conditioning` (no CFG): the MODEL's patches and whatever the
    conditioning carries (a ControlNet) take part, as in sampling."""
    sampling = model.get_model_object("model_sampling")
    sigma_of = sampling.sigma(torch.arange(sampling.sigmas.shape[0], dtype=torch.float32)).double().tolist()
    result = []

    def body(predict, models):
        device = model.load_device

        def eps_fn(x_vp: torch.Tensor, t: int) -> torch.Tensor:
            frames = x_vp.shape[0] * x_vp.shape[1]
            sigma = torch.full((frames,), sigma_of[t], dtype=torch.float64, device=device)
            return predict_eps(predict, x_vp.flatten(0, 1).to(device), sigma).unflatten(0, x_vp.shape[:2]).to(x_vp)

        result.append(invert.ddim_invert(eps_fn, x0.to(device), num_steps=steps, callback=callback))

    run_with_model_call(model, conditioning, tuple(x0.shape), body)
    return result[0]


def require_inversion_schedule(model_sampling, steps: int, sigmas: torch.Tensor) -> None:
    """The sampler's SIGMAS are the DDIM schedule this inversion runs along (its timesteps, then 0):
    the inverted noise is the starting point of that schedule and of no other."""
    timesteps = sample.ddim_timesteps(steps).tolist()
    expected = model_sampling.sigma(torch.tensor(timesteps, dtype=torch.float32)).tolist() + [0.0]
    given = sigmas.detach().float().cpu().flatten().tolist()
    described = f"{len(given) - 1} steps from sigma {given[0]:.3f}" if given else "no steps"
    if len(given) != len(expected):
        fix = f"set DDIM Invert Video's steps to {len(given) - 1}" if len(given) > 1 else "give the sampler steps"
        raise ValueError(
            f"DDIM Invert Video inverts along {steps} DDIM steps (timesteps {timesteps[0]} to 1), but the sampler's "
            f"SIGMAS hold {described}: the inverted noise would not be their starting point; {fix}, or the "
            "scheduler's steps to match (ddim_uniform, denoise 1)"
        )
    if any(abs(g - e) > 1e-4 * max(e, 1e-2) for g, e in zip(given, expected)):
        raise ValueError(
            f"the sampler's SIGMAS ({described}) are not the ddim_uniform schedule of {steps} steps that DDIM "
            f"Invert Video inverts along (from sigma {expected[0]:.3f}): use BasicScheduler with ddim_uniform and "
            "denoise 1 for the sampler"
        )


class DDIMInvertVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "DDIMInvertVideo",
            display_name="DDIM Invert Video",
            category=CATEGORY,
            description=(
                "DDIM inversion (eta 0, no CFG) of the source video's latents through the MODEL (use the tuned "
                "video model and an empty prompt, as Tune-A-Video). The output is the starting noise for "
                "SamplerCustom with add_noise off, sampler ddim and the ddim_uniform scheduler with the same steps."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The (tuned) video MODEL, the same one that samples afterwards."),
                io.Latent.Input("latent", tooltip="The source video's latents (VAE Encode of its frames; frames = batch)."),
                io.Conditioning.Input("conditioning", tooltip="The inversion prompt; Tune-A-Video uses an empty prompt."),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip="DDIM steps; use the same number in the sampler's ddim_uniform scheduler (50 in the paper)."),
                io.Sigmas.Input(
                    "sigmas", optional=True,
                    tooltip="The SIGMAS the sampler will use (BasicScheduler, ddim_uniform). Connected, a schedule other than "
                    "this inversion's (another step count, scheduler or denoise) is refused instead of sampling from noise "
                    "that does not belong to it.",
                ),
            ],
            outputs=[io.Latent.Output(display_name="noise", tooltip="The inverted noise, scaled for SamplerCustom with add_noise off.")],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, sigmas=None) -> io.NodeOutput:
        require_sd1_eps(model)
        require_no_smooth_noise_patch(model, "DDIM Invert Video")
        require_no_sampling_guidance(model, "DDIM Invert Video", "the inversion steps with the noise prediction itself",
                                     "connect DDIM Invert Video to the MODEL before that node, and that node to the "
                                     "sampler's MODEL only")
        require_sd15_schedule(model, "DDIM Invert Video")
        samples = video_frames_latent(latent, "DDIM Invert Video")
        single_prompt(conditioning, "DDIM Invert Video", "conditioning")  # one prompt, checked before any work
        require_tuned_size(model, samples)
        base = model.model
        if sigmas is not None:
            require_inversion_schedule(base.model_sampling, steps, sigmas)
        # The DDIM arithmetic between the UNet calls stays on the model's device: no copies per step.
        x0 = base.latent_format.process_in(samples.float()).unsqueeze(0)
        progress = Progress(steps)
        advice = (
            "inversion runs every frame through the UNet at once: use fewer frames or a lower resolution "
            "(Select Video Frames)"
        )
        with memory.explain_out_of_memory(f"inverting {checks.frames(samples.shape[0])} of {pixel_size(samples)}", advice):
            noise_vp = invert_video(model, conditioning, x0, steps, callback=lambda i, n, x: progress.step())
        first_t = int(sample.ddim_timesteps(steps)[0])
        sigma = base.model_sampling.sigma(torch.tensor([float(first_t)])).item()
        # ComfyUI's samplers start from x = x_vp * sqrt(1 + sigma^2) in "process_in" latent space.
        noise = base.latent_format.process_out(noise_vp[0].cpu() * (1.0 + sigma**2) ** 0.5)
        return io.NodeOutput({"samples": noise.to(comfy.model_management.intermediate_device())})

NODES = [InflateUNet, InflateControlVideo, CrossFrameAttention, DDIMInvertVideo]
