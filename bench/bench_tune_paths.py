"""CPU time of a One-shot Tune step on the tiny checkpoint: the ComfyUI-native video model tuned
through ComfyUI's model call (nodes/video_tuning.py, "new") against the diffusers video UNet the
node ran before 2026-12-02 (the UNet converted and inflated, tuned by the same Tuner on placed
weights: smooth_core's diffusers path, "old").

Run with a host's Python (it imports ComfyUI in-process, on the CPU), one path per process, so
`farm-bench --vs` can pair them:

    farm-bench -n 6 --timeout 900 \
        --vs "sh -c 'exec .host/venv/bin/python bench/bench_tune_paths.py old >>/tmp/old.txt 2>&1'" \
        -- sh -c 'exec .host/venv/bin/python bench/bench_tune_paths.py new >>/tmp/new.txt 2>&1'

Each run prints one JSON line: the median seconds of a tuning step after two warm-up steps.
`--use-pytorch-cross-attention` after the path gives ComfyUI's attention the kernel it uses on
NVIDIA GPUs (PyTorch's), the one the old path's diffusers UNet used; without it ComfyUI's CPU
default (sub-quadratic attention) runs.
"""

import importlib
import json
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
HOST = REPO / ".host"
options = sys.argv[2:]
sys.argv, path = sys.argv[:1], sys.argv[1] if len(sys.argv) > 1 else "new"
sys.path[:0] = [str(HOST / "ComfyUI"), str(HOST / "base" / "custom_nodes")]

import torch  # noqa: E402

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
# ComfyUI's attention on the CPU is its sub-quadratic one unless told otherwise; on NVIDIA GPUs
# PyTorch's (SDPA), which the diffusers UNet of the old path uses everywhere.
comfy.cli_args.args.use_pytorch_cross_attention = "--use-pytorch-cross-attention" in options
import comfy.sd  # noqa: E402

pack = importlib.import_module("ComfyUI-SmoothVideo")
tune = importlib.import_module("ComfyUI-SmoothVideo.smooth_core.tune")
convert = importlib.import_module("ComfyUI-SmoothVideo.smooth_core.convert")
inflate = importlib.import_module("ComfyUI-SmoothVideo.smooth_core.inflate")
video_patches = importlib.import_module("ComfyUI-SmoothVideo.nodes.video_patches")
video_tuning = importlib.import_module("ComfyUI-SmoothVideo.nodes.video_tuning")

FRAMES, LATENT, STEPS, WARMUP = 6, 12, 12, 2  # the demo's quick settings: 6 frames at 96 px
checkpoint = HOST / "base" / "models" / "checkpoints" / "smoothvideo_tiny_sd15.safetensors"
model = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=False)[0]
g = torch.Generator().manual_seed(0)
latents = torch.randn(1, FRAMES, 4, LATENT, LATENT, generator=g)
text = torch.randn(1, 77, 768, generator=g)
config = tune.TuneConfig(steps=STEPS, seed=1, mixed_precision="no")
stamps = []


def stamp(record):
    stamps.append(time.perf_counter())


if path == "old":
    # What One-shot Tune ran until 2026-12-02: the UNet converted to diffusers and inflated there,
    # a fork of it (own trainables, shared frozen weights) tuned on placed weights.
    unet, _ = convert.ldm_unet_to_diffusers(dict(model.model.diffusion_model.state_dict()))
    video_unet = inflate.inflate_unet(unet, "sparse_causal").requires_grad_(False).eval().fork()
    with video_unet.placed("cpu", tune.matmul_dtype("no", "cpu")):
        stamps.append(time.perf_counter())
        tune.Tuner(video_unet, latents, text, config).run(callback=stamp)
elif path == "new":
    native = video_patches.native_video_model(model, "sparse_causal", temporal=True)
    tunable = video_tuning.NativeTunable(native, video_patches.video_patches(native), torch.device("cpu"))

    def body():
        stamps.append(time.perf_counter())
        tune.Tuner(tunable, latents, text, config).run(callback=stamp)

    video_tuning.run_in_guider(tunable, [[text, {}]], tuple(latents.shape), body)
else:
    raise SystemExit(f"path must be new or old, got {path!r}")

steps = [b - a for a, b in zip(stamps, stamps[1:])][WARMUP:]
print(json.dumps({"path": path, "step_seconds_median": statistics.median(steps), "steps": len(steps),
                  "threads": torch.get_num_threads(), "comfy_attention": options}))
