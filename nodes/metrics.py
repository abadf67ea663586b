"""VL Score (the paper's Eq. 6) and frame selection for scoring and tuning."""

from __future__ import annotations

import os

import av
import numpy as np
import torch
from comfy_api.latest import InputImpl, io

import comfy.model_management
import comfy.utils
import folder_paths

from ..smooth_core import loveu, metrics
from ..smooth_core.video import crop_to_multiple, select_frames
from .common import CATEGORY, NODE_PREFIX, Progress

NOT_COMPUTED = -1.0
# transformers CLIP folders (config.json, weights, tokenizer, preprocessor) for CLIP-T and CLIP-F as
# the LOVEU-TGVE-2023 benchmark computes them: ComfyUI/models/smoothvideo_clip/<folder>/
folder_paths.add_model_folder_path("smoothvideo_clip", os.path.join(folder_paths.models_dir, "smoothvideo_clip"))
LoveuClipType = io.Custom("SMOOTHVIDEO_LOVEU_CLIP")
# Peak memory of ComfyUI's SD VAE encoder on a CPU for one float32 frame of P pixels: about
# A * P + B * P**2 bytes (the mid-block attention over the P / 64 latent positions grows with P**2).
# Measured (peak RSS growth, torch 2.14, 2-core x86-64): 0.62, 2.89, 7.10, 13.46 GiB at 256, 512,
# 768, 1024 px square; this fit is within 2% of them from 512 px up and above them below. ComfyUI's
# own estimate (1767 * 4 bytes per pixel) is about half, so its batching alone can exhaust the RAM.
ENCODE_BYTES_PER_PIXEL, ENCODE_BYTES_PER_PIXEL_SQUARED = 11_300, 0.0025
MEMORY_MARGIN = 0.9  # of what the system reports free


def cpu_encode_bytes(pixels: int, dtype: torch.dtype = torch.float32) -> float:
    """Estimated peak bytes of VAE-encoding one frame of `pixels` pixels on the CPU."""
    return (ENCODE_BYTES_PER_PIXEL * pixels + ENCODE_BYTES_PER_PIXEL_SQUARED * pixels**2) * dtype.itemsize / 4


def frames_per_encode(vae, images: torch.Tensor, chunk_size: int) -> int:
    """How many frames one VAE encode may take (at most chunk_size) so that a CPU's memory holds
    it; frames of which not even one fits are refused, naming the size that does. On a CPU the
    operating system kills the whole server when memory runs out (no error to catch); on a GPU
    running out is an error, which ComfyUI answers by encoding in tiles."""
    device = torch.device(getattr(vae, "device", "cpu"))
    if device.type != "cpu":
        return chunk_size
    height, width = images.shape[1:3]
    need = cpu_encode_bytes(height * width, getattr(vae, "vae_dtype", torch.float32))
    free = comfy.model_management.get_free_memory(device)
    budget = MEMORY_MARGIN * free
    if need > budget:
        a, b = ENCODE_BYTES_PER_PIXEL, ENCODE_BYTES_PER_PIXEL_SQUARED
        fits = (-a + (a * a + 4 * b * budget) ** 0.5) / (2 * b)  # pixels: a P + b P^2 = budget
        scale = (fits / (height * width)) ** 0.5
        fit_w, fit_h = (max(8, int(side * scale) // 8 * 8) for side in (width, height))
        raise ValueError(
            f"VL Score: VAE-encoding one {width}x{height} frame needs about {need / 2**30:.1f} GiB of memory on the "
            f"CPU, but {free / 2**30:.1f} GiB are free: select frames of at most {fit_w}x{fit_h} px (Select Video "
            "Frames width and height), or free memory"
        )
    return max(1, min(chunk_size, int(budget // need)))


def encode_latents(vae, images: torch.Tensor, chunk_size: int, progress: Progress | None = None) -> torch.Tensor:
    """VAE-encodes (f, h, w, c) frames chunk by chunk (long videos must not exhaust memory)."""
    chunks = []
    for start in range(0, images.shape[0], chunk_size):
        chunks.append(vae.encode(images[start : start + chunk_size, :, :, :3]).float().cpu())
        if progress:
            progress.step()
    return torch.cat(chunks)


class VLScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "VLScore",
            display_name="VL Score",
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Video latent score (SmoothVideo Eq. 6): each frame's VAE latent is compared with the "
                "previous frame's by cosine similarity over a sliding window, best offset kept, averaged "
                "over adjacent pairs. Higher is smoother; shuffling frames lowers it. Optionally also the "
                "CLIP frame consistency (CLIP-F) and text alignment (CLIP-T) scores: as the LOVEU-TGVE-2023 "
                "benchmark computes them with loveu_clip (Load CLIP (LOVEU metrics)), or with a CLIP vision model and "
                "a CLIP text encoder."
            ),
            inputs=[
                io.Vae.Input("vae", tooltip="The VAE whose latents are compared (the video's SD VAE)."),
                io.Image.Input("images", tooltip="The video's frames, in order, as an image batch (at least 2)."),
                io.Int.Input(
                    "k", default=8, min=0, max=64,
                    tooltip="Sliding-window slack in latent pixels (paper: 8). The window is the latent "
                    "size minus k, tried at (k+1)^2 offsets; must be smaller than the latent side (image/8).",
                ),
                io.Int.Input(
                    "chunk_size", default=16, min=1, max=256,
                    tooltip="Frames VAE-encoded at once; lower it if encoding runs out of memory.",
                ),
                io.ClipVision.Input(
                    "clip_vision", optional=True,
                    tooltip="Optional CLIP vision model (e.g. ViT-L/14) for CLIP-F, and for CLIP-T with clip + text.",
                ),
                io.Clip.Input(
                    "clip", optional=True,
                    tooltip="Optional CLIP text encoder matching clip_vision (with its trained text projection), for CLIP-T. "
                    "An SD1.x checkpoint's CLIP (clip_l) is refused: it holds no text projection; use loveu_clip instead.",
                ),
                io.String.Input("text", optional=True, default="", tooltip="The edit prompt, for CLIP-T."),
                LoveuClipType.Input(
                    "loveu_clip", optional=True,
                    tooltip="Optional CLIP from Load CLIP (LOVEU metrics), instead of clip_vision and clip: CLIP-F, and "
                    "CLIP-T with text, as the LOVEU-TGVE-2023 benchmark computes them (frames at 480x480, the CLIP processor).",
                ),
            ],
            outputs=[
                io.Float.Output(display_name="vl_score", tooltip="VL score, in [-1, 1]; 1 = every frame a shifted copy of the previous."),
                io.Float.Output(display_name="clip_frame", tooltip="CLIP-F: mean cosine over all frame pairs; -1 unless loveu_clip or clip_vision is given."),
                io.Float.Output(display_name="clip_text", tooltip="CLIP-T: mean over the frames of the model's logit scale times cos(frame, text) with loveu_clip (as the benchmark), of 100*cos with clip_vision and clip; -1 unless text is given with one of them."),
            ],
        )

    @classmethod
    def execute(cls, vae, images, k, chunk_size=16, clip_vision=None, clip=None, text="", loveu_clip=None) -> io.NodeOutput:
        if loveu_clip is not None and (clip_vision is not None or clip is not None):
            raise ValueError(
                "VL Score: connect loveu_clip, or clip_vision (and clip), not both: each computes CLIP-F and CLIP-T"
            )
        if clip is not None and text.strip():
            require_text_projection(clip)
        frames = images.shape[0]
        if frames < 2:
            raise ValueError(f"VL Score needs at least 2 frames, got {frames}: connect a video's frames, not a single image")
        latent_side = min(images.shape[1], images.shape[2]) // 8
        if k >= latent_side:
            raise ValueError(
                f"VL Score: k={k} does not fit frames of {images.shape[2]}x{images.shape[1]} "
                f"(latent side {latent_side}); lower k below {latent_side} or use larger frames"
            )
        per_encode = frames_per_encode(vae, images, chunk_size)
        encodes, chunks = -(-frames // per_encode), -(-frames // chunk_size)
        progress = Progress(encodes + (chunks if clip_vision is not None else 0))
        latents = encode_latents(vae, images, per_encode, progress)
        vl = float(metrics.vl_score(latents, k=k))
        clip_f = clip_t = NOT_COMPUTED
        if loveu_clip is not None:
            # the frames as the pictures SaveImage would write (8 bits, truncated), then the benchmark's resize
            pictures = loveu.frames_from_arrays(np.clip(255.0 * images[..., :3].cpu().numpy(), 0, 255).astype(np.uint8))
            features = loveu_clip.image_features(pictures)
            clip_f = loveu_clip.clip_frame(pictures, features)
            if text.strip():
                clip_t = loveu_clip.clip_text(pictures, text, features)
        elif clip_vision is not None:
            embeds = []
            for start in range(0, frames, chunk_size):
                embeds.append(clip_vision.encode_image(images[start : start + chunk_size]).image_embeds.float().cpu())
                progress.step()
            embeds = torch.cat(embeds)
            clip_f = float(metrics.clip_frame_consistency(embeds))
            if clip is not None and text.strip():
                _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
                clip_t = float(metrics.clip_text_alignment(embeds, pooled.float().cpu().reshape(-1)))
        summary = f"VL score: {vl:.4f} ({frames} frames, k={k})"
        if clip_f != NOT_COMPUTED:
            summary += f"\nCLIP-F: {clip_f:.4f}"
        if clip_t != NOT_COMPUTED:
            summary += f"\nCLIP-T: {clip_t:.2f}"
        # "text" is shown on the node by web/smoothvideo.js; the numbers are for HTTP clients (/history).
        scores = {"text": [summary], "vl_score": [vl], "clip_frame": [clip_f], "clip_text": [clip_t]}
        return io.NodeOutput(vl, clip_f, clip_t, ui=scores)


def trim_window(video) -> tuple[float, float]:
    """(start, duration) in seconds of a VIDEO trimmed by ComfyUI's Video Slice (0.17 and later;
    duration 0: to the end; start < 0: from the end, resolved by the reader). ComfyUI 0.33 tells it
    with get_active_trim_window; 0.17.2 keeps it in the object only; 0.3.75 has no trimming."""
    if hasattr(video, "get_active_trim_window"):
        return tuple(float(x) for x in video.get_active_trim_window())
    return (float(getattr(video, "_VideoFromFile__start_time", 0) or 0),
            float(getattr(video, "_VideoFromFile__duration", 0) or 0))


def read_video_stream(video, stop: int | None = None) -> tuple[torch.Tensor, float | None]:
    """The frames of a VIDEO's first video stream up to frame `stop` (None: all), (f, h, w, 3), and
    its frame rate (None when the file declares none), reading nothing else: a file (Load Video) is
    decoded here without its audio, within its trim window, each frame turned upright by its display
    rotation, to uint8 (a quarter of the float frames' memory until the selection); other VIDEOs
    (Create Video) give their float frames (every VIDEO has a stream source, but for those it is the frames encoded anew: lossy).
    A stream that cannot be decoded is refused with what to do."""
    if not isinstance(video, InputImpl.VideoFromFile):
        components = video.get_components()
        return components.images, float(components.frame_rate)
    source = video.get_stream_source()
    name = os.path.basename(source) if isinstance(source, str) else "this video"
    if hasattr(source, "seek"):
        source.seek(0)
    start, duration = trim_window(video)
    frames = []
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise ValueError(f"Select Video Frames: {name} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if start < 0:
                start = max((container.duration or 0) / av.time_base + start, 0.0)
            first = int(start / stream.time_base)
            last = int((start + duration) / stream.time_base) if duration else None
            if first:
                container.seek(first, stream=stream)
            for frame in container.decode(stream):
                if first and frame.pts is not None and frame.pts < first:
                    continue
                if last is not None and frame.pts is not None and frame.pts >= last:
                    break
                picture = frame.to_ndarray(format="rgb24")
                quarter_turns = int(round(getattr(frame, "rotation", 0) or 0)) // 90
                if quarter_turns % 4:
                    picture = np.ascontiguousarray(np.rot90(picture, k=quarter_turns, axes=(0, 1)))
                frames.append(torch.from_numpy(picture))
                if stop is not None and len(frames) >= stop:
                    break
    except av.error.FFmpegError as error:
        raise ValueError(
            f"Select Video Frames: the video stream of {name} cannot be decoded ({error}). Re-encode the clip "
            "(e.g. ffmpeg -i CLIP -an -c:v libx264 -pix_fmt yuv420p CLIP.mp4) and load that, or load its frames as images"
        ) from None
    if not frames:
        raise ValueError(f"Select Video Frames: the video stream of {name} holds no frames"
                         + (" in the trimmed part" if start or duration else "") + "; re-export the video")
    return torch.stack(frames), float(rate) if rate else None


class SelectVideoFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "SelectVideoFrames",
            display_name="Select Video Frames",
            category=CATEGORY,
            description=(
                "Takes `count` frames from `start`, every `stride`-th, and resizes them to a size the VAE and "
                "UNet accept (multiples of 8), with their frame rate. Connect Load Video's VIDEO: only its video "
                "stream is read (a clip whose audio track cannot be decoded works). Tune-A-Video uses 24 frames at "
                "512 px (8 at 256 px to try quickly)."
            ),
            inputs=[
                io.Image.Input(
                    "images", optional=True,
                    tooltip="Instead of video: all frames of a clip as an image batch (e.g. from Get Video Components, "
                    "with its fps into frame_rate).",
                ),
                io.Int.Input("start", default=0, min=0, max=100000, tooltip="First frame taken (0-based)."),
                io.Int.Input("count", default=24, min=0, max=100000, tooltip="Frames taken; 0 takes all from start."),
                io.Int.Input("stride", default=1, min=1, max=1000, tooltip="Take every stride-th frame (lowers the frame rate)."),
                io.Int.Input(
                    "width", default=512, min=0, max=4096, step=8,
                    tooltip="Output width, a multiple of 8; 0 keeps the width (cropped down to a multiple of 8).",
                ),
                io.Int.Input(
                    "height", default=512, min=0, max=4096, step=8,
                    tooltip="Output height, a multiple of 8; 0 keeps the height (cropped down to a multiple of 8).",
                ),
                io.Video.Input(
                    "video", optional=True,
                    tooltip="The VIDEO of Load Video (or Trim Video): its video stream alone is read, upright, with "
                    "its frame rate (a file whose audio track cannot be decoded stops Get Video Components, not this).",
                ),
                io.Float.Input(
                    "frame_rate", default=8.0, min=0.01, max=1000.0, step=0.01, optional=True,
                    tooltip="The frame rate of images (Get Video Components' fps), for the fps output. With video, "
                    "the video's own rate is used (this only where the file declares none).",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The selected frames, as an image batch."),
                io.Float.Output(
                    display_name="fps",
                    tooltip="The frame rate of the selected frames (the clip's divided by stride, so that they last "
                    "as long as the clip they came from): for Create Video.",
                ),
            ],
        )

    @classmethod
    def execute(cls, start, count, stride, width, height, images=None, video=None, frame_rate=8.0) -> io.NodeOutput:
        if width % 8 or height % 8:
            raise ValueError(f"width and height must be multiples of 8 (got {width}x{height}); or 0 to keep the size")
        if (images is None) == (video is None):
            raise ValueError(
                "Select Video Frames takes one source: connect images (from Get Video Components) or video (from Load "
                "Video), not " + ("both" if images is not None else "neither")
            )
        if video is not None:
            decoded, rate = read_video_stream(video, stop=start + count * stride if count else None)
            frame_rate = rate or frame_rate
            frames = select_frames(decoded, start, count, stride)
            if frames.dtype == torch.uint8:
                frames = frames.float() / 255.0
        else:
            frames = select_frames(images, start, count, stride)
        if width or height:
            target_w = width or frames.shape[2]
            target_h = height or frames.shape[1]
            frames = comfy.utils.common_upscale(frames.movedim(-1, 1), target_w, target_h, "bilinear", "center").movedim(1, -1)
        return io.NodeOutput(crop_to_multiple(frames, 8), float(frame_rate) / stride)

def require_text_projection(clip) -> None:
    """CLIP-T needs the text encoder's trained projection into CLIP's joint space. SD1.x's clip_l
    from a checkpoint has none: the checkpoint does not hold it, ComfyUI loads without it and
    leaves the layer as allocated (zeros or stale memory). A clip_l loaded on its own with its
    projection is the same object with other values, so neither can be told apart: both are refused."""
    if getattr(clip.cond_stage_model, "clip", None) == "clip_l":
        raise ValueError(
            "VL Score: CLIP-T with this CLIP would be meaningless: its text encoder is SD1.x's clip_l, whose text "
            "projection an SD1.x checkpoint does not hold (ComfyUI leaves that layer unset, and a clip_l loaded on its "
            "own cannot be told apart from it). For CLIP-T and CLIP-F as the LOVEU-TGVE-2023 benchmark computes them, "
            "put a transformers CLIP folder (openai/clip-vit-large-patch14) in models/smoothvideo_clip/, load it with "
            "Load CLIP (LOVEU metrics) and connect it to loveu_clip instead of clip_vision and clip; or clear text "
            "for CLIP-F alone"
        )


def loveu_clip_folders() -> list[str]:
    """The folders of models/smoothvideo_clip/ that hold a transformers model (config.json)."""
    names = set()
    for root in folder_paths.get_folder_paths("smoothvideo_clip"):
        if os.path.isdir(root):
            names.update(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "config.json")))
    return sorted(names)


class LoadLoveuClip(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=NODE_PREFIX + "LoadLoveuClip",
            display_name="Load CLIP (LOVEU metrics)",
            category=CATEGORY,
            description=(
                "Loads a transformers CLIP model (CLIPModel and its processor) from a folder in "
                "models/smoothvideo_clip/, for VL Score's CLIP-T and CLIP-F exactly as the LOVEU-TGVE-2023 "
                "benchmark computes them. The benchmark uses openai/clip-vit-large-patch14; nothing is downloaded."
            ),
            inputs=[
                io.Combo.Input(
                    "folder", options=loveu_clip_folders(),
                    tooltip="A folder in models/smoothvideo_clip/ holding a transformers CLIP model: config.json, "
                    "the weights, the tokenizer files and preprocessor_config.json (as save_pretrained or a "
                    "Hugging Face snapshot writes them).",
                ),
            ],
            outputs=[LoveuClipType.Output(display_name="loveu_clip", tooltip="For VL Score's loveu_clip input.")],
        )

    @classmethod
    def execute(cls, folder) -> io.NodeOutput:
        path = next((os.path.join(root, folder) for root in folder_paths.get_folder_paths("smoothvideo_clip")
                     if os.path.isfile(os.path.join(root, folder, "config.json"))), None)
        if path is None:
            raise ValueError(f"Load CLIP (LOVEU metrics): no folder {folder!r} with a config.json in models/smoothvideo_clip/")
        return io.NodeOutput(loveu.LoveuClip(path, device=str(comfy.model_management.get_torch_device())))


NODES = [VLScore, SelectVideoFrames, LoadLoveuClip]
