"""One-shot Tune with Smooth Loss (the paper's Eq. 4 on Tune-A-Video) and Load Tuned Video Weights."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import time

import torch
from comfy_api.latest import io, ui

import comfy.model_management
import folder_paths

from ..smooth_core import checks, losses, memory, tune, video_layers
from . import video_patches, video_tuning
from .common import CATEGORY, NODE_PREFIX, Progress, latent_size, pixel_size, single_prompt, video_frames_latent
from .model_checks import (
    require_no_sampling_guidance,
    require_no_smooth_noise_patch,
    require_sd15_schedule,
    require_sd1_eps,
)
from .plot import loss_curve_image
from .video_patches import VideoPatches

WEIGHTS_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIX = ".checkpoint.safetensors"


def require_video_model(model, node: str) -> VideoPatches:
    patches = video_patches.video_patches(model)
    if patches is None:
        raise ValueError(f"{node} needs a video MODEL: put Inflate UNet between Load Checkpoint and this node")
    return patches


def tuned_file_paths(save_name: str) -> tuple[str, str]:
    """models/smoothvideo/<save_name>.safetensors and <save_name>.checkpoint.safetensors; the name
    may not leave that folder, reach another name's files, or make a file name (with a save's
    temporary suffix) longer than the folder allows."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]*", save_name) or ".." in save_name:
        raise ValueError(
            f"save_name {save_name!r} must be a plain file name (letters, digits, space, _ . -; no / or ..): "
            "tuned weights are saved in models/smoothvideo/"
        )
    if save_name.lower().endswith(CHECKPOINT_SUFFIX.removesuffix(WEIGHTS_SUFFIX)):
        owner = save_name[: -len(".checkpoint")]
        raise ValueError(
            f"save_name {save_name!r} ends in .checkpoint: its weights would be the file that holds the "
            f"tuning checkpoint of save_name {owner!r}; choose a name that does not end in .checkpoint"
        )
    folder = folder_paths.get_folder_paths("smoothvideo")[0]
    os.makedirs(folder, exist_ok=True)
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    # The longest name a tune writes: the checkpoint's temporary file.
    longest = len((save_name + CHECKPOINT_SUFFIX).encode()) + tune.TEMPORARY_SUFFIX_LENGTH
    if longest > name_max:
        fits = name_max - len(CHECKPOINT_SUFFIX) - tune.TEMPORARY_SUFFIX_LENGTH
        raise ValueError(
            f"save_name is {len(save_name.encode())} characters long, but at most {fits} fit: the files saved as "
            f"models/smoothvideo/<save_name>{CHECKPOINT_SUFFIX} (and their temporary copies) may have names of "
            f"at most {name_max} characters here; choose a shorter save_name"
        )
    return os.path.join(folder, save_name + WEIGHTS_SUFFIX), os.path.join(folder, save_name + CHECKPOINT_SUFFIX)


def remove_temporary_files(*paths: str) -> None:
    """Deletes what saves of these files left behind when their process was killed mid-write.
    ComfyUI runs one prompt at a time, so no save of this name is under way now."""
    for path in paths:
        for stale in tune.temporary_files(path):
            try:
                os.remove(stale)
            except FileNotFoundError:
                pass


def save_tuned_weights_safely(tunable, path: str, metadata: dict[str, str]) -> None:
    """The finished tune's weights at `path`; if that write fails, under a name of its own beside
    it, and an error that says where (the tune is not lost to a full name, a read-only file...)."""
    try:
        tune.save_tuned_weights(tunable, path, metadata)
        return
    except OSError as error:
        failure = error
    folder = os.path.dirname(path)
    fallback = os.path.join(folder, f"smoothvideo_tuned_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}{WEIGHTS_SUFFIX}")
    try:
        tune.save_tuned_weights(tunable, fallback, metadata)
    except OSError as error:
        raise OSError(
            f"the tuned weights could not be written to models/smoothvideo/{os.path.basename(path)} "
            f"({failure.strerror or failure}) nor to {os.path.basename(fallback)} ({error.strerror or error}): "
            "free disk space or fix the folder's permissions, then re-run (the last checkpoint is kept)"
        ) from failure
    raise OSError(
        f"the tuned weights could not be written to models/smoothvideo/{os.path.basename(path)} "
        f"({failure.strerror or failure}); they are saved as models/smoothvideo/{os.path.basename(fallback)} "
        "instead: choose that file in Load Tuned Video Weights"
    ) from failure


def base_metadata(model, latents: torch.Tensor, text: torch.Tensor) -> dict[str, str]:
    """What tuned weights and checkpoints are tied to: the base UNet and the LoRAs (weight patches)
    on the MODEL, the frame count, the latent size, and (for resuming) the exact video latents and
    prompt embedding."""
    content = hashlib.sha256(latents.float().cpu().numpy().tobytes())
    content.update(text.float().cpu().numpy().tobytes())
    return {
        "base_unet": base_fingerprint(model),
        "unet_patches": weight_patches_fingerprint(model),
        "frames": str(latents.shape[1]),
        "latent_size": latent_size(latents),
        "video_and_prompt": content.hexdigest()[:16],
    }


def base_fingerprint(model) -> str:
    """The base UNet's fingerprint (`tune.unet_fingerprint`), from the checkpoint's own weights: a
    loaded clone's weight patches (LoRAs) sit in the shared UNet's tensors until it is unloaded."""
    if model.model.current_weight_patches_uuid is not None:
        comfy.model_management.unload_all_models()
    return tune.unet_fingerprint(model.model.diffusion_model.state_dict())


UNET_PREFIX = "diffusion_model."


def weight_patches_fingerprint(model) -> str:
    """A fingerprint of the MODEL's UNet weight patches (LoRAs, merges; "none" without any), which
    tells apart LoRAs and strengths that the base model's fingerprint cannot see."""
    digest, patched = hashlib.sha256(), False
    for key, patches in sorted(model.patches.items()):
        if key.startswith(UNET_PREFIX):
            digest.update(key.encode())
            _hash_patch(digest, patches)
            patched = True
    return digest.hexdigest()[:16] if patched else "none"


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


class OneShotTune(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "OneShotTune",
            display_name="One-shot Tune with Smooth Loss",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "One-shot tuning of a video MODEL on one video (Tune-A-Video, or ControlVideo with a ControlNet on "
                "positive), with the SmoothVideo noise constraint: loss = MSE + lambda2 * smooth loss (Eq. 4). Only "
                "the model's own set trains: Tune-A-Video's attn1/attn2 query projections and temporal attention, "
                "or ControlVideo's attn1 output projections, temporal attention and conv_temp. Saves the tuned weights (and a checkpoint every N steps, which a "
                "re-run with the same settings resumes) in models/smoothvideo/."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The inflated MODEL (Inflate UNet). It is not changed; a tuned copy is output."),
                io.Latent.Input("latent", tooltip="The source video: VAE Encode of its frames. The LATENT batch is the frame axis (24 frames at 512 px in the paper)."),
                io.Conditioning.Input("positive", tooltip="The prompt that describes the source video."),
                io.Int.Input("steps", default=500, min=1, max=100000, tooltip="Optimizer steps (paper: 500; 300-500 for Tune-A-Video)."),
                io.Float.Input("learning_rate", default=3e-5, min=1e-7, max=1e-2, step=1e-6, tooltip="AdamW learning rate (Tune-A-Video: 3e-5)."),
                io.Float.Input("lambda2", default=0.2, min=0.0, max=10.0, step=0.01, tooltip="Weight of the smooth loss (paper: 0.2). 0 = the Tune-A-Video baseline."),
                io.Float.Input("lambda1", default=1000.0, min=1.0, max=1e6, step=1.0, tooltip="Divisor of the C coefficient in the smooth loss (paper: 1000)."),
                io.Combo.Input("variant", options=list(losses.VARIANTS), default="cross_frame", tooltip="cross_frame: Eq. 3 (second differences, needs 3 frames). native: first differences. simple / simple_first: |D2(eps)| / |D(eps)| without the latent term."),
                io.Int.Input("seed", default=33, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Seeds the noise and timesteps drawn each step."),
                io.Int.Input("checkpoint_every", default=100, min=0, max=100000, tooltip="Save a resumable checkpoint every N steps (0 = never)."),
                io.String.Input("save_name", default="smoothvideo_tuned", tooltip="File name (no folders) in models/smoothvideo/ for the tuned weights."),
                io.Boolean.Input("gradient_checkpointing", default=False, tooltip="Recompute activations in the backward pass: much less GPU memory, about a third slower."),
            ],
            outputs=[
                io.Model.Output(display_name="tuned_model", tooltip="The tuned video MODEL, for DDIM Invert Video and the sampler."),
                io.Image.Output(display_name="loss_curve", tooltip="Total, MSE and smooth loss per step."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, positive, steps, learning_rate, lambda2, lambda1, variant, seed,
                checkpoint_every, save_name, gradient_checkpointing) -> io.NodeOutput:
        patches = require_video_model(model, "One-shot Tune")
        require_sd1_eps(model)
        require_no_smooth_noise_patch(model, "One-shot Tune")
        require_sd15_schedule(model, "One-shot Tune")
        require_no_sampling_guidance(model, "One-shot Tune", "tuning trains the noise prediction itself",
                                     "apply that node to One-shot Tune's tuned_model instead, before the sampler")
        if patches.temporal is None:
            raise ValueError(
                "One-shot Tune: this video MODEL comes from Cross-frame Attention (training-free, no temporal "
                "layers), so it has nothing to tune: tune a MODEL from Inflate UNet"
            )
        samples = video_frames_latent(latent, "One-shot Tune")
        require_tunable_latent(model, samples, variant, lambda2)
        if patches.attention == video_layers.KEY_FRAME:
            video_layers.require_key_frame(patches.key_frame, samples.shape[0])
        text = single_prompt(positive, "One-shot Tune", "positive").float()
        final_path, checkpoint_path = tuned_file_paths(save_name)
        remove_temporary_files(final_path, checkpoint_path)
        # Checkpoints are written by this node (they carry the loss history for the curve).
        device = comfy.model_management.get_torch_device()
        config = tune.TuneConfig(
            steps=steps, learning_rate=learning_rate, lambda1=lambda1, lambda2=lambda2, variant=variant,
            seed=seed, gradient_checkpointing=gradient_checkpointing, mixed_precision=tuning_precision(device),
        )
        latents = model.model.latent_format.process_in(samples.float()).unsqueeze(0)
        metadata = base_metadata(model, latents, text)
        metadata.update(lambda1=str(lambda1), lambda2=str(lambda2), variant=variant, steps=str(steps),
                        attention=patches.attention, group_norm=patches.group_norm, design=patches.design,
                        key_frame=str(patches.key_frame))

        # Float32 trainables, the MODEL's own weights frozen, run through ComfyUI's model call.
        tunable = video_tuning.NativeTunable(model, patches, device)
        if gradient_checkpointing:
            tunable.enable_gradient_checkpointing()
        progress = Progress(steps)
        history: list[list] = []
        first_step = 0
        notes: list[str] = []

        advice = (
            "turn on gradient_checkpointing, or use fewer frames or a lower resolution (Select Video Frames). "
            f"Work up to the last checkpoint is kept in models/smoothvideo/{os.path.basename(checkpoint_path)}; "
            "a re-run with the same settings resumes from it."
        )
        started = time.time()

        def body() -> None:
            nonlocal history, first_step
            tuner = tune.Tuner(tunable, latents, text, config)
            history = resume_if_possible(tuner, checkpoint_path, metadata, notes)
            first_step = tuner.steps_done
            progress.bar.update_absolute(first_step)

            def after_step(record: tune.StepRecord) -> None:
                history.append([record.total, record.mse, record.smooth])
                if checkpoint_every and record.step % checkpoint_every == 0:
                    tune.save_checkpoint(tuner, checkpoint_path, {**metadata, "history": json.dumps(history)})
                progress.step()

            tuner.run(callback=after_step)

        try:
            # Loading the model whole for training can run out of memory too.
            with memory.explain_out_of_memory(f"tuning {checks.frames(latents.shape[1])} of {pixel_size(samples)}", advice):
                video_tuning.run_in_guider(tunable, positive, tuple(latents.shape), body)
        except BaseException:
            # Failed or interrupted: nothing of the run stays in memory; its checkpoint is on disk.
            del tunable
            gc.collect()
            raise
        finally:
            # The optimizer state went with the tuner; the activations' freed pages go back to the system.
            comfy.model_management.soft_empty_cache()
            memory.return_freed_host_memory()
        save_tuned_weights_safely(tunable, final_path, metadata)  # the float32 weights
        seconds = time.time() - started
        ran = max(steps - first_step, 0)

        curve = loss_curve_image({
            "total": [h[0] for h in history],
            "mse": [h[1] for h in history],
            "smooth": [h[2] if h[2] is not None else float("nan") for h in history],
        })
        total, mse, smooth = history[-1]
        summary = (
            f"tuned {ran} step{'' if ran == 1 else 's'} in {seconds:.1f} s ({seconds / max(ran, 1):.2f} s/step)"
            + (f", resumed from the checkpoint at step {first_step}" if first_step else "")
            + f"\nfinal loss {total:.4f} (mse {mse:.4f}, smooth {smooth if smooth is not None else float('nan'):.4f})"
            + f"\nsaved models/smoothvideo/{os.path.basename(final_path)}"
            + "".join(f"\n{note}" for note in notes)
        )
        patched = video_tuning.tuned_model(model, tunable.tuned_weights(), metadata["latent_size"])
        del tunable
        # The loss curve shows on the node as a preview; the numbers are for HTTP clients (/history).
        preview = ui.PreviewImage(curve, cls=cls).as_dict()
        return io.NodeOutput(patched, curve, ui={**preview, "text": [summary], "losses": history})


def tuning_precision(device: torch.device) -> str:
    """The Tuner's "auto" (bf16 with bf16 hardware, fp16 on Volta / Turing), except on GPUs where
    ComfyUI itself does not compute in fp16 (GTX 16xx and the like, where fp16 gives NaNs, and
    older cards): float32 there, when bf16 is not available either."""
    if device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False):
        return "auto"
    return "auto" if comfy.model_management.should_use_fp16(device, prioritize_performance=False) else "no"


def require_tunable_latent(model, samples: torch.Tensor, variant: str, lambda2: float) -> None:
    """The LATENT fits the model and has the frames the smooth loss needs: said before any model is loaded."""
    in_channels = model.model.model_config.unet_config.get("in_channels")
    if in_channels != 4:
        raise ValueError(
            f"One-shot Tune tunes text-to-image SD1.5 models, but this MODEL's UNet takes {in_channels} input "
            "channels (an InstructPix2Pix model?): inflate and tune an SD1.5 checkpoint instead"
        )
    if samples.shape[1] != in_channels:
        raise ValueError(
            f"the LATENT has {samples.shape[1]} channels but the model takes {in_channels}: "
            "VAE Encode the frames with this checkpoint's VAE"
        )
    frames, needed = samples.shape[0], losses.min_frames(variant) if lambda2 > 0 else 1
    if frames < needed:
        fewer = [v for v in losses.VARIANTS if losses.min_frames(v) <= frames]
        raise ValueError(
            f"One-shot Tune: the {variant} smooth loss needs at least {needed} frames, but the LATENT has {frames}: "
            "select more frames (Select Video Frames count)"
            + (f", or choose the {' or '.join(fewer)} variant ({frames} frames are enough)" if fewer else "")
        )


def resume_if_possible(tuner: tune.Tuner, checkpoint_path: str, metadata: dict[str, str],
                       notes: list[str]) -> list[list]:
    """Continues from this save_name's checkpoint when it was made for the same base model,
    video and settings (a different run starts anew); returns the loss history so far. A
    checkpoint that cannot be read (cut short, damaged) is set aside, and the tune starts anew
    with a note for the user: it must not block its name."""
    if not os.path.exists(checkpoint_path):
        return []
    try:
        state = tune.load_checkpoint(checkpoint_path)
    except Exception as error:  # safetensors' own error, a wrong format, bad JSON
        aside = checkpoint_path + ".damaged"
        os.replace(checkpoint_path, aside)
        notes.append(
            f"the checkpoint models/smoothvideo/{os.path.basename(checkpoint_path)} could not be read "
            f"({readable_reason(error)}): it was set aside as {os.path.basename(aside)} and the tune started anew"
        )
        return []
    saved = state["metadata"]
    if any(saved.get(key) != value for key, value in metadata.items() if key != "steps"):
        return []
    try:
        tuner.load_state_dict(state)
    except ValueError:
        return []
    return json.loads(saved["history"])


def readable_reason(error: Exception) -> str:
    """What went wrong reading a file, in a few words, without the path (the message names the file)."""
    text = str(error).strip() or type(error).__name__
    text = re.sub(r"\S*/\S*", "", text).strip(" :")  # a path inside the library's message
    return text[:200]


class LoadTunedVideoWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = [f for f in folder_paths.get_filename_list("smoothvideo") if not f.endswith(CHECKPOINT_SUFFIX)]
        return io.Schema(
            node_id=NODE_PREFIX + "LoadTunedVideoWeights",
            display_name="Load Tuned Video Weights",
            category=CATEGORY,
            description=(
                "Applies weights saved by One-shot Tune (models/smoothvideo/) to an inflated MODEL of the same base "
                "checkpoint. DDIM Invert Video then expects frames of the size they were tuned on."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The inflated MODEL (Inflate UNet) of the checkpoint the weights were tuned from."),
                io.Combo.Input("weights", options=sorted(files), tooltip="Tuned weights in models/smoothvideo/."),
            ],
            outputs=[io.Model.Output(display_name="tuned_model", tooltip="The video MODEL with the tuned weights.")],
        )

    @classmethod
    def execute(cls, model, weights) -> io.NodeOutput:
        patches = require_video_model(model, "Load Tuned Video Weights")
        if weights.endswith(CHECKPOINT_SUFFIX):
            raise ValueError(
                f"{weights} is a tuning checkpoint (One-shot Tune resumes from it), not tuned weights: choose "
                f"{weights.removesuffix(CHECKPOINT_SUFFIX) + WEIGHTS_SUFFIX}, which One-shot Tune writes when it ends"
            )
        path = folder_paths.get_full_path("smoothvideo", weights)
        if path is None:
            raise ValueError(f"tuned weights {weights!r} not found in models/smoothvideo/")
        try:
            state, metadata = tune.load_tuned_weights(path)
        except Exception as error:  # safetensors' own error, a wrong format
            raise ValueError(
                f"{weights} cannot be read as tuned weights ({readable_reason(error)}): the file is damaged, cut "
                "short or not written by One-shot Tune; re-run One-shot Tune to write it again, or choose another file"
            ) from None
        base, recorded = base_fingerprint(model), metadata.get("base_unet")
        if recorded != base:
            raise ValueError(
                f"{weights} was tuned from another base model (UNet {metadata.get('base_unet')}, this one is {base}): "
                "load the checkpoint it was tuned from"
            )
        tuned_design = metadata.get("design", video_patches.TUNE_A_VIDEO)  # files from before ControlVideo: none
        if tuned_design != patches.design:
            made_by = {video_patches.TUNE_A_VIDEO: "Inflate UNet (video)",
                       video_patches.CONTROLVIDEO: "Inflate UNet (ControlVideo)"}
            raise ValueError(
                f"{weights} was tuned on a {tuned_design} video model, but this MODEL is a {patches.design} one: "
                f"load it onto the MODEL of {made_by.get(tuned_design, tuned_design)}"
            )
        if patches.design == video_patches.CONTROLVIDEO and metadata.get("key_frame") != str(patches.key_frame):
            raise ValueError(
                f"{weights} was tuned with key_frame {metadata.get('key_frame')}, but this MODEL's Inflate UNet "
                f"(ControlVideo) uses key_frame {patches.key_frame}: set its key_frame to {metadata.get('key_frame')}"
            )
        tuned_attention = metadata.get("attention")
        if tuned_attention != patches.attention:
            raise ValueError(
                f"{weights} was tuned with {tuned_attention} attention, but this MODEL's Inflate UNet uses "
                f"{patches.attention}: set Inflate UNet's attention to {tuned_attention}"
            )
        tuned_norm, group_norm = metadata.get("group_norm"), patches.group_norm
        if tuned_norm is None:
            raise ValueError(
                f"{weights} was written by an earlier version of SmoothVideo (per-frame group norm, a trainable set "
                "with norm_temp), which this one does not load: tune it again with One-shot Tune"
            )
        if tuned_norm != group_norm:
            raise ValueError(
                f"{weights} was tuned with group_norm {tuned_norm}, but this MODEL's Inflate UNet uses group_norm "
                f"{group_norm}: set Inflate UNet's group_norm to {tuned_norm}"
            )
        tuned_patches, own_patches = metadata.get("unet_patches"), weight_patches_fingerprint(model)
        if tuned_patches != own_patches:
            if tuned_patches == "none":
                problem = "without LoRAs, but this MODEL has LoRAs (or other weight patches)"
            elif own_patches == "none":
                problem = "with LoRAs (or other weight patches), but this MODEL has none"
            else:
                problem = "with other LoRAs (or other strengths) than this MODEL's"
            raise ValueError(
                f"{weights} was tuned on this checkpoint {problem}: apply the same LoRAs, at the same strengths "
                "(before or after Inflate UNet)"
            )
        try:
            weights_by_kind = video_tuning.split_tuned_weights(model, patches, state)
        except ValueError as error:
            raise ValueError(f"{weights} does not fit this video MODEL ({error}): load the checkpoint it was tuned "
                             "from, inflated as it was for tuning") from None
        return io.NodeOutput(video_tuning.tuned_model(model, weights_by_kind, metadata.get("latent_size")))


NODES = [OneShotTune, LoadTunedVideoWeights]
