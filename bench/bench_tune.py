"""Tuning speed and memory through the project's real code path (smooth_core.tune.Tuner on an
inflated diffusers UNet), with random weights.

  python bench/bench_tune.py --model sd15 --frames 24 --size 512 --device cuda [--gradient-checkpointing]
  python bench/bench_tune.py --model tiny --frames 4 --size 96 --device cpu

--model sd15 is Stable Diffusion 1.5's UNet configuration (859M parameters); --model tiny is
the one-level, 320-channel UNet of the project's tiny test checkpoint. Prints one Markdown
row for bench/RESULTS.md: seconds per step (median of --steps after --warmup), peak GPU
memory, and the smooth loss's overhead over a plain MSE step: one Tuner alternates lambda2 =
0.2 and 0 step by step, and the medians of the two kinds are compared.

The model starts as the One-shot Tune node finds it: frozen weights in --weights-dtype (fp16,
ComfyUI's dtype for SD1.5 on a GPU; float32 on a CPU) on the CPU, float32 trainables.

Optimisation variants, for before/after rows on one card (bench/run_gpu.sh):
  --frozen placed       (default, the node's path) VideoUNet.placed: the frozen weights copied
                        to the device in the autocast dtype, once
  --frozen autocast     (before) the whole model moved to the device as it is; bf16 autocast
                        casts every frozen weight at each forward and keeps the casts for backward
  --checkpoint-blocks   gradient checkpointing of some UNet parts only (the full-resolution
                        level holds most activations), between default and --gradient-checkpointing
  --channels-last       the UNet's weights and activations in channels-last memory format
  --compile             torch.compile of the UNet's forward (the compile time is printed apart)
  --profile FILE.md     torch.profiler over 3 steps: the device's busy fraction and top operators
  --extra-host-syncs    (before) the device synchronised after the forward pass and before the
                        update, where the Tuner used to read the loss and the gradient norm

On CUDA the row also counts the host syncs of one step (torch.cuda's sync debug mode; the copies of
the step's inputs to the device count too, though nothing is queued when they run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import pathlib
import platform
import statistics
import sys
import time
import warnings

import diffusers
import torch
from diffusers import UNet2DConditionModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from smooth_core import inflate, tune  # noqa: E402

SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
TINY = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(320,),
    down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
    cross_attention_dim=768, attention_head_dim=8,
)


def seconds_per_step(tuner: tune.Tuner, warmup: int, steps: int, device: str) -> dict[float, float]:
    """Median seconds of a step with the smooth loss (lambda2 = 0.2) and of the plain MSE step
    (lambda2 = 0), from one Tuner whose lambda2 alternates step by step (the order flipping every
    pair), so that both see the same machine state, weights and optimizer."""
    configs = {0.2: tuner.config, 0.0: dataclasses.replace(tuner.config, lambda2=0.0)}
    for _ in range(warmup):
        tuner.step()
    times: dict[float, list[float]] = {0.2: [], 0.0: []}
    for i in range(steps):
        for lambda2 in ((0.2, 0.0) if i % 2 == 0 else (0.0, 0.2)):
            tuner.config = configs[lambda2]
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            tuner.step()
            if device == "cuda":
                torch.cuda.synchronize()
            times[lambda2].append(time.perf_counter() - start)
    tuner.config = configs[0.2]
    return {lambda2: statistics.median(t) for lambda2, t in times.items()}


def profile_steps(tuner: tune.Tuner, device: torch.device, path: str, steps: int = 3) -> None:
    """torch.profiler over `steps` tuning steps: how busy the device was (kernel time over wall
    time: what host syncs and launch gaps leave idle) and the operators that took the time,
    written to `path` as Markdown (the first place to look when a step is slower than its FLOPs)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            tuner.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - started
    if device.type == "cuda":
        # The kernels themselves: an aten op's entry also carries its kernels' device time, so
        # summing every entry would count it twice.
        key = "self_device_time_total"
        events = [e for e in prof.key_averages()
                  if e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    else:
        key = "self_cpu_time_total"
        events = list(prof.key_averages())
    busy = sum(getattr(e, key) for e in events) / 1e6
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:25]
    with open(path, "w") as f:
        f.write(f"# Profile of {steps} tuning steps ({datetime.date.today()}, {device_label(device)}, torch {torch.__version__})\n\n")
        f.write(f"wall {wall:.3f} s; {'kernel' if device.type == 'cuda' else 'operator self'} time {busy:.3f} s "
                f"({busy / wall:.0%} of the wall time; the rest is the device waiting)\n\n")
        f.write(f"| {'kernel' if device.type == 'cuda' else 'operator'} | calls | self time (ms) | share |\n"
                "| --- | --- | --- | --- |\n")
        for e in rows:
            t = getattr(e, key) / 1e3
            f.write(f"| {e.key[:120]} | {e.count} | {t:.1f} | {t / 1e3 / busy if busy else 0:.1%} |\n")
    print(f"profile of {steps} steps written to {path}: busy {busy / wall:.0%} of {wall:.3f} s", file=sys.stderr)


def count_host_syncs(tuner: tune.Tuner) -> int:
    """The synchronising CUDA calls of one step, as torch.cuda's sync debug mode reports them: the
    reads of results and the copies of the step's inputs (noise, timesteps, C) to the device."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            tuner.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def add_host_syncs(video_unet, optimizer) -> None:
    """The previous Tuner's two syncs per step: after the forward pass (the loss read) and before
    the update (the gradient norm read); for a before/after pair on one card."""
    # A stream sync, as a read is (torch.cuda.synchronize() would wait the same, but the sync debug
    # mode does not count it).
    video_unet.register_forward_hook(lambda *_: torch.cuda.current_stream().synchronize())
    optimizer.register_step_pre_hook(lambda *_: torch.cuda.current_stream().synchronize())


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("sd15", "tiny"), default="tiny")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=96, help="frame size in pixels (latent = size / 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixed-precision", default="auto")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--checkpoint-blocks", default=None,
                        help="checkpoint only these comma-separated UNet parts, e.g. down_blocks.0,up_blocks.3")
    parser.add_argument("--weights-dtype", choices=("fp16", "float32"), default=None,
                        help="the frozen weights' dtype before tuning (default: fp16 on cuda, float32 on cpu)")
    parser.add_argument("--frozen", choices=("placed", "autocast"), default="placed")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--profile", default=None, metavar="FILE.md",
                        help="also profile 3 steps and write the busy fraction and top operators there")
    parser.add_argument("--extra-host-syncs", action="store_true",
                        help="(before) synchronise after the forward pass and before the update")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each kind (lambda2 = 0.2 and 0)")
    options = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(options.device)
    if options.extra_host_syncs and device.type != "cuda":
        parser.error("--extra-host-syncs synchronises a CUDA device: use --device cuda")
    weights_dtype = options.weights_dtype or ("fp16" if device.type == "cuda" else "float32")
    video_unet = inflate.inflate_unet(UNet2DConditionModel(**(SD15 if options.model == "sd15" else TINY)))
    for p in video_unet.frozen_parameters():
        p.data = p.data.to(torch.float16 if weights_dtype == "fp16" else torch.float32)
    matmul_dtype = tune.matmul_dtype(options.mixed_precision, device)
    if options.frozen == "placed":
        variants = [f"frozen {weights_dtype} placed in {str(matmul_dtype).removeprefix('torch.')}"]
    else:
        cast = " (autocast casts it at each forward)" if matmul_dtype != torch.float32 else ""
        variants = [f"frozen {weights_dtype} moved as it is{cast}"]
    if options.channels_last:
        video_unet.unet.to(memory_format=torch.channels_last)
        variants.append("channels-last")
    if options.compile:
        video_unet.unet.forward = torch.compile(video_unet.unet.forward)
        variants.append("torch.compile")
    if options.frozen == "placed":
        placement = video_unet.placed(device, matmul_dtype)
    else:
        video_unet.to(device)
        placement = contextlib.nullcontext()
    latent = options.size // 8
    latents = torch.randn(1, options.frames, 4, latent, latent, device=device)
    text = torch.randn(1, 77, 768, device=device)
    compile_seconds = None
    with placement:
        config = tune.TuneConfig(
            steps=10**6, learning_rate=3e-5, lambda2=0.2, mixed_precision=options.mixed_precision,
            gradient_checkpointing=options.gradient_checkpointing,
        )
        tuner = tune.Tuner(video_unet, latents, text, config)
        if options.checkpoint_blocks:
            video_unet.enable_gradient_checkpointing(options.checkpoint_blocks.split(","))
        if options.extra_host_syncs:
            add_host_syncs(video_unet, tuner.optimizer)
            variants.append("2 extra host syncs per step (before)")
        if options.compile:
            started = time.perf_counter()
            tuner.step()  # compiles (the first call at these shapes)
            if device.type == "cuda":
                torch.cuda.synchronize()
            compile_seconds = time.perf_counter() - started
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results = seconds_per_step(tuner, options.warmup, options.steps, device.type)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.type == "cuda" else "n/a"
        precision = tuner.precision
        if device.type == "cuda":
            try:
                variants.append(f"{count_host_syncs(tuner)} host syncs/step")
            except Exception as error:  # the timing row still counts
                print(f"counting host syncs failed: {error!r}", file=sys.stderr)
        if options.profile:
            try:
                profile_steps(tuner, device, options.profile)
            except Exception as error:  # the timing row below still counts
                print(f"profiling failed: {error!r}", file=sys.stderr)
        del tuner
    name = device_label(device)
    params = sum(p.numel() for p in video_unet.parameters()) / 1e6
    if options.checkpoint_blocks:
        mode = f"grad. checkpointing of {options.checkpoint_blocks.replace(',', ', ')} only"
    else:
        mode = "grad. checkpointing" if options.gradient_checkpointing else "default"
    mode += f", precision {precision}"
    mode += "".join(f", {v}" for v in variants)
    if compile_seconds is not None:
        mode += f" (first step, compiling: {compile_seconds:.0f} s)"
    print(f"| {datetime.date.today()} | {name} | torch {torch.__version__}, diffusers {diffusers.__version__} | {options.model} ({params:.0f}M) | "
          f"{options.frames} x {options.size} px | {mode} | {results[0.2]:.3f} s | "
          f"{peak} | {results[0.2] / results[0.0] - 1:+.1%} |")


if __name__ == "__main__":
    main()
