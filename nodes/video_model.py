"""Video UNet nodes: Inflate UNet, Cross-frame Attention (Text2Video-Zero), DDIM Invert Video,
and the adapter that lets ComfyUI run the inflated diffusers UNet as a MODEL.

The inflated UNet enters a cloned ModelPatcher as an object patch on "diffusion_model", so
stock samplers (KSampler, SamplerCustom) use it, ComfyUI loads and offloads its weights,
and the original UNet stays untouched (and off the GPU) behind the patch.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import torch
from comfy_api.latest import io

import comfy.lora
import comfy.model_management
import comfy.model_sampling
import comfy.patcher_extension
import folder_paths

from ..smooth_core import checks, convert, inflate, invert, memory, sample, schedule
from .common import CATEGORY, NODE_PREFIX, Progress, latent_size, pixel_size, single_prompt, video_frames_latent
from .model_checks import prediction_name, schedule_name

# Tuned weights and tuning checkpoints: ComfyUI/models/smoothvideo/
folder_paths.add_model_folder_path("smoothvideo", os.path.join(folder_paths.models_dir, "smoothvideo"))
# Only .safetensors files are tuned weights: a save's temporary file or a damaged checkpoint set
# aside is not listed (an empty set would list every file).
folder_paths.folder_names_and_paths["smoothvideo"][1].add(".safetensors")


# Top-level parts of ComfyUI's SD1.x UNet, where weight patch keys point (diffusion_model.<part>...).
LDM_UNET_PARTS = {"time_embed", "label_emb", "input_blocks", "middle_block", "output_blocks", "out"}
LORA_AFTER_INFLATING = (
    "a LoRA (or another weight patch) was applied to a video MODEL, whose UNet does not take such patches: "
    "apply LoRAs to the MODEL before Inflate UNet / Cross-frame Attention (they are baked into the video UNet there)"
)


def refuse_unet_patches(patcher, *args) -> None:
    """ON_LOAD callback of video MODELs (clones keep it): ComfyUI would skip UNet weight patches
    added after inflating without a word, since none of their keys names a video UNet weight."""
    if any(key.startswith(UNET_PREFIX) for key in patcher.patches):
        raise ValueError(LORA_AFTER_INFLATING)


class VideoUNetAdapter(torch.nn.Module):
    """Stands in for ComfyUI's diffusion_model: its call signature, the inflated UNet inside.

    ComfyUI batches the frames of one video (and the cond/uncond copies of it) along the
    batch axis; the frame count is the batch divided by the number of cond/uncond chunks.
    With `chunk_size`, longer videos run in chunks of that many frames led by frame 0
    (`inflate.forward_in_chunks`, Text2Video-Zero); None runs every frame in one call.
    """

    def __init__(self, video_unet: inflate.VideoUNet, attention: str, source_unet: torch.nn.Module,
                 chunk_size: int | None = None, weight_patches: str = "none"):
        super().__init__()
        self.video_unet = video_unet
        self.attention = attention
        self.chunk_size = chunk_size
        # Fingerprint of the LoRAs / weight patches baked into the video UNet ("none": the
        # checkpoint's own weights); tuned weights record it (patched_unet_weights).
        self.weight_patches = weight_patches
        # "HxW" of the latents the weights were tuned on (One-shot Tune, Load Tuned Video Weights).
        self.tuned_latent_size: str | None = None
        # The 2D UNet it replaces, kept outside the module tree (it must not follow the adapter
        # to the GPU): clones share one BaseModel, which holds the adapter while one is loaded.
        self.source = [source_unet]

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        """The 2D UNet's weights, under ComfyUI's keys. While a video MODEL is loaded this adapter
        sits in the BaseModel that every clone of the checkpoint shares, so whatever reads that
        BaseModel's weights then (LoRA loaders map their keys with it) must still find the
        checkpoint's UNet there, not the video UNet."""
        return self.source[0].state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in LDM_UNET_PARTS:
                # ComfyUI looks a weight patch's key up here: a LoRA added after inflating.
                raise AttributeError(LORA_AFTER_INFLATING) from None
            raise

    @property
    def dtype(self) -> torch.dtype:
        return next(self.video_unet.parameters()).dtype

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        if control is not None:
            raise ValueError("ControlNet is not supported on an inflated (video) UNet yet; remove the ControlNet")
        # After a partial (low VRAM) load by ComfyUI. At every call, not in an ON_LOAD callback:
        # ModelPatcher.partially_load can also unload part of a model without calling load().
        inflate.gather_on(self, x.device)
        chunks = max(len(transformer_options.get("cond_or_uncond", [])), 1)
        frames = x.shape[0] // chunks
        if self.chunk_size is None:
            return self.video_unet.forward_frames(x, timesteps, context, frames)
        # For InstructPix2Pix, x already holds the source frames' latents (c_concat) as channels 4-7.
        return inflate.forward_in_chunks(self.video_unet.forward_frames, (x, timesteps, context), frames, self.chunk_size)


def video_adapter(model) -> VideoUNetAdapter | None:
    """The adapter of an inflated MODEL, or None for a plain one."""
    patch = model.object_patches.get("diffusion_model")
    return patch if isinstance(patch, VideoUNetAdapter) else None


def source_unet(model) -> torch.nn.Module:
    """The model's own 2D UNet, even while an inflated clone of it is patched in."""
    unet = model.model.diffusion_model
    return unet.source[0] if isinstance(unet, VideoUNetAdapter) else unet


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
    if base.model_config.unet_config.get("context_dim") != 768 or not hasattr(source_unet(model), "input_blocks"):
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
                "Frames are the LATENT batch. LoRAs loaded before this node are baked in. Works in stock samplers; "
                "the input MODEL is not changed."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 (or InstructPix2Pix) MODEL from Load Checkpoint."),
                io.Combo.Input(
                    "attention", options=list(inflate.ATTENTION_MODES), default="sparse_causal",
                    tooltip="sparse_causal: each frame attends to the first and the previous frame (Tune-A-Video). "
                    "cross_frame: every frame attends to the first frame (Text2Video-Zero).",
                ),
                io.Combo.Input(
                    "group_norm", options=list(inflate.GROUP_NORM_MODES), default="video", optional=True,
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


UNET_PREFIX = "diffusion_model."


def patched_unet_weights(model) -> tuple[dict[str, torch.Tensor], str]:
    """The 2D UNet's weights as this MODEL samples with them: its weight patches (LoRAs, model
    merges) applied to the original weights, whichever clone ComfyUI has loaded at the moment;
    and a fingerprint of those patches ("none" without any), which tells apart LoRAs and
    strengths that the base model's fingerprint cannot see."""
    # A loaded clone's patches sit in the shared UNet's tensors in place; unloading restores them.
    comfy.model_management.unload_all_models()
    weights = dict(source_unet(model).state_dict())
    digest, patched = hashlib.sha256(), False
    for key, patches in sorted(model.patches.items()):
        name = key[len(UNET_PREFIX):]
        if key.startswith(UNET_PREFIX) and name in weights:
            original = weights[name]
            weights[name] = comfy.lora.calculate_weight(patches, original.to(torch.float32, copy=True), key).to(original.dtype)
            digest.update(name.encode())
            _hash_patch(digest, patches)
            patched = True
    return weights, digest.hexdigest()[:16] if patched else "none"


def _hash_patch(digest, value) -> None:
    """Feeds a weight patch as ComfyUI holds it, (strength, adapter or tensors, strength_model,
    offset, function) per patch, into `digest`: the strengths exactly and a strided sample of
    every tensor, so the fingerprint depends on the patch itself, not on the dtype the base
    weights are stored in or on the arithmetic that applies it."""
    if isinstance(value, torch.Tensor):
        sample = value.detach().flatten()[:: max(1, value.numel() // 4096)].to("cpu", torch.float32)
        digest.update(f"tensor{tuple(value.shape)}".encode() + sample.contiguous().numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(b"(")
        for item in value:
            _hash_patch(digest, item)
        digest.update(b")")
    elif isinstance(value, dict):
        for item_key in sorted(value, key=str):
            digest.update(str(item_key).encode())
            _hash_patch(digest, value[item_key])
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(repr(value).encode())
    elif hasattr(value, "weights"):  # comfy.weight_adapter: LoRA, LoHa, LoKr, ...
        digest.update(type(value).__name__.encode())
        _hash_patch(digest, value.weights)
    else:
        digest.update(type(value).__qualname__.encode())


def video_model(model, attention: str, temporal: bool, chunk_size: int | None = None, group_norm: str | None = None):
    """A clone of `model` whose diffusion_model is its UNet inflated (`inflate.inflate_unet`),
    with the MODEL's LoRAs (weight patches) baked in."""
    if video_adapter(model) is not None:
        raise ValueError("this MODEL is already inflated; connect the Load Checkpoint MODEL instead")
    require_sd1_eps(model)
    unet_2d = source_unet(model)
    # ComfyUI runs nodes in inference mode; tensors made there can never join autograd,
    # and One-shot Tune trains the inflated model.
    with torch.inference_mode(False):
        weights, weight_patches = patched_unet_weights(model)
        # The video UNet's layers are plain torch ones, which compute in their weights' dtype:
        # where ComfyUI stores the UNet in one dtype and computes in another (manual cast: fp16
        # weights on a CPU or on a GPU without fast fp16), the video UNet holds the one it computes in.
        compute_dtype = model.model.manual_cast_dtype
        if compute_dtype is not None:
            weights = {k: v.to(compute_dtype) if v.is_floating_point() else v for k, v in weights.items()}
        unet, _ = convert.ldm_unet_to_diffusers(weights)
        video_unet = inflate.inflate_unet(unet, attention, temporal=temporal, group_norm=group_norm)
    video_unet.requires_grad_(False).eval()
    patched = model.clone()
    # The UNet's patches are in the video UNet now; on the adapter they would have nowhere to go.
    baked = [key for key in patched.patches if key.startswith(UNET_PREFIX)]
    for key in baked:
        del patched.patches[key]
    if baked:
        patched.patches_uuid = uuid.uuid4()
    patched.add_object_patch("diffusion_model", VideoUNetAdapter(video_unet, attention, unet_2d, chunk_size, weight_patches))
    patched.add_callback(comfy.patcher_extension.CallbacksMP.ON_LOAD, refuse_unet_patches)
    return patched


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
    adapter = video_adapter(model)
    tuned = adapter.tuned_latent_size if adapter is not None else None
    if tuned is not None and tuned != latent_size(samples):
        pixels = "x".join(str(int(n) * 8) for n in tuned.split("x")[::-1])
        raise ValueError(
            f"DDIM Invert Video: this MODEL was tuned on {pixels} px frames (latents {tuned}) but the LATENT's "
            f"frames are {pixel_size(samples)}: select the frames at the size they were "
            "tuned on (Select Video Frames width/height), or tune on this size"
        )


def noise_predictor(model, context: torch.Tensor):
    """eps_fn(x_t, t) for smooth_core's DDIM: runs a ComfyUI MODEL (plain or inflated) on
    variance-preserving latents (b, f, c, h, w) at integer timestep t, no CFG."""
    comfy.model_management.load_models_gpu([model])
    base = model.model
    device = model.load_device
    sampling = base.model_sampling
    # Read once: the sigma of every training timestep, and the prompt on the device. Per-step
    # copies between host and GPU would each wait for the previous step's model call.
    timesteps = torch.arange(sampling.sigmas.shape[0], dtype=torch.float32)
    sigma_of = sampling.sigma(timesteps).float().cpu().tolist()
    context = context.to(device)

    def eps_fn(x_vp: torch.Tensor, t: int) -> torch.Tensor:
        frames = x_vp.shape[0] * x_vp.shape[1]
        sigma = sigma_of[t]
        x = x_vp.flatten(0, 1).to(device) * (1.0 + sigma**2) ** 0.5
        sigmas = torch.full((frames,), sigma, device=device)
        denoised = base.apply_model(x, sigmas, c_crossattn=context.expand(frames, -1, -1), transformer_options={})
        eps = (x - denoised) / sigma
        return eps.unflatten(0, x_vp.shape[:2]).to(x_vp)

    return eps_fn


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
        require_sd15_schedule(model, "DDIM Invert Video")
        samples = video_frames_latent(latent, "DDIM Invert Video")
        context = single_prompt(conditioning, "DDIM Invert Video", "conditioning")
        require_tuned_size(model, samples)
        base = model.model
        if sigmas is not None:
            require_inversion_schedule(base.model_sampling, steps, sigmas)
        # The DDIM arithmetic between the UNet calls stays on the model's device: no copies per step.
        x0 = base.latent_format.process_in(samples.float()).unsqueeze(0).to(model.load_device)
        progress = Progress(steps)
        advice = (
            "inversion runs every frame through the UNet at once: use fewer frames or a lower resolution "
            "(Select Video Frames)"
        )
        with memory.explain_out_of_memory(f"inverting {checks.frames(samples.shape[0])} of {pixel_size(samples)}", advice):
            noise_vp = invert.ddim_invert(
                noise_predictor(model, context), x0, num_steps=steps, callback=lambda i, n, x: progress.step()
            )
        first_t = int(sample.ddim_timesteps(steps)[0])
        sigma = base.model_sampling.sigma(torch.tensor([float(first_t)])).item()
        # ComfyUI's samplers start from x = x_vp * sqrt(1 + sigma^2) in "process_in" latent space.
        noise = base.latent_format.process_out(noise_vp[0].cpu() * (1.0 + sigma**2) ** 0.5)
        return io.NodeOutput({"samples": noise.to(comfy.model_management.intermediate_device())})

NODES = [InflateUNet, CrossFrameAttention, DDIMInvertVideo]
