"""DDIM inversion + DDIM sampling with classifier-free guidance and Eq. 5, through the project's
real code path (smooth_core.invert.ddim_invert, smooth_core.sample.ddim_sample + SmoothNoise on
an inflated diffusers UNet), with random weights.

  python bench/bench_invert_sample.py --model sd15 --frames 24 --size 512 --steps 50 --device cuda
  python bench/bench_invert_sample.py --model tiny --frames 4 --size 64 --steps 5 --device cpu

As Tune-A-Video edits a video: the clean latents are inverted with the "empty" prompt and no
guidance (--steps UNet calls on one video), then sampled from the inverted noise with CFG
(uncond and cond in one batched UNet call per step, 2 videos) and the Eq. 5 noise correction
on the post-CFG noise at every step (lambda3 0.5). The UNet runs in --dtype (default bf16 on
CUDA, float32 on the CPU), the DDIM / Eq. 5 arithmetic in float32, everything under
torch.inference_mode() (as ComfyUI runs nodes). One warm-up pass of 1 inversion and 1
sampling step comes first. Prints one Markdown row for bench/RESULTS.md: seconds for the
inversion, the sampling and both, peak GPU memory (torch.cuda.max_memory_allocated over the
timed pass), and the achieved TFLOP/s from the UNet FLOPs counted by count_flops.py on fake
tensors (3 x --steps forwards' worth: --steps of one video + --steps of two).

--eq5-overhead N adds a second row: the same sampling with and without Eq. 5 (stock DDIM),
N times each, interleaved, from the same noise: the median seconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import statistics
import sys
import time

import diffusers
import torch
from diffusers import UNet2DConditionModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_tune import SD15, TINY, device_label  # noqa: E402

from smooth_core import inflate, invert, sample  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
H100_BF16_DENSE = 989e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def invert_and_sample(model, latents, empty, edit, steps: int, cfg: float, dtype, device) -> tuple[float, float, torch.Tensor]:
    """(inversion seconds, sampling seconds, sampled latents)."""
    context = torch.cat([empty, edit])

    def eps_invert(x, t):
        return model(x.to(dtype), t, empty)

    def eps_sample(x, t):
        uncond, cond = model(torch.cat([x, x]).to(dtype), t, context).float().chunk(2)
        return sample.classifier_free_guidance(uncond, cond, cfg)

    sync(device)
    start = time.perf_counter()
    noise = invert.ddim_invert(eps_invert, latents, steps)
    sync(device)
    inverted = time.perf_counter()
    out = sample.ddim_sample(eps_sample, noise, steps, smooth=sample.SmoothNoise(lambda3=0.5))
    sync(device)
    return inverted - start, time.perf_counter() - inverted, out


def sampling_seconds(model, noise, empty, edit, steps: int, cfg: float, dtype, device, smooth) -> float:
    context = torch.cat([empty, edit])

    def eps_sample(x, t):
        uncond, cond = model(torch.cat([x, x]).to(dtype), t, context).float().chunk(2)
        return sample.classifier_free_guidance(uncond, cond, cfg)

    sync(device)
    start = time.perf_counter()
    sample.ddim_sample(eps_sample, noise, steps, smooth=smooth)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("sd15", "tiny"), default="tiny")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="frame size in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the inversion and of the sampling")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="UNet dtype; default bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--eq5-overhead", type=int, default=0, metavar="N",
                        help="also time sampling with and without Eq. 5, N times each, interleaved")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (fake tensors on the CPU, a few seconds)")
    options = parser.parse_args()

    device = torch.device(options.device)
    dtype = DTYPES[options.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    config = SD15 if options.model == "sd15" else TINY
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**config)
    video_unet = inflate.inflate_unet(unet.to(dtype)).eval()
    latent = options.size // 8
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, options.frames, 4, latent, latent, generator=generator).to(device)
    empty, edit = torch.randn(2, 1, 77, config["cross_attention_dim"], generator=generator).to(device, dtype)

    with torch.inference_mode():
        invert_and_sample(video_unet, latents, empty, edit, 1, options.cfg, dtype, device)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        inversion, sampling, out = invert_and_sample(video_unet, latents, empty, edit, options.steps, options.cfg,
                                                     dtype, device)
    if not torch.isfinite(out).all():
        print("warning: the sampled latents are not finite (random weights)", file=sys.stderr)
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "n/a"
    total = inversion + sampling

    throughput = "n/a"
    if not options.no_flops:
        import count_flops

        flops = options.steps * (count_flops.count_forward(config, options.frames, options.size, videos=1)
                                 + count_flops.count_forward(config, options.frames, options.size, videos=2))
        throughput = f"{flops / 1e12:.3g} TFLOP, {flops / total / 1e12:.3g} TFLOP/s"
        if device.type == "cuda" and "H100" in torch.cuda.get_device_name(device):
            throughput += f" ({flops / total / H100_BF16_DENSE:.0%} of 989)"

    name = device_label(device)
    params = sum(p.numel() for p in video_unet.parameters()) / 1e6
    print(f"| {datetime.date.today()} | {name} | torch {torch.__version__}, diffusers {diffusers.__version__} | {options.model} ({params:.0f}M), "
          f"{str(dtype).removeprefix('torch.')} | {options.frames} x {options.size} px | {options.steps} + {options.steps} "
          f"(CFG {options.cfg:g}, Eq. 5) | {inversion:.2f} s | {sampling:.2f} s | {total:.2f} s | {peak} | {throughput} |")

    if options.eq5_overhead:
        stock, smooth = [], []
        with torch.inference_mode():
            for _ in range(options.eq5_overhead):
                stock.append(sampling_seconds(video_unet, latents, empty, edit, options.steps, options.cfg, dtype, device, None))
                smooth.append(sampling_seconds(video_unet, latents, empty, edit, options.steps, options.cfg, dtype, device,
                                               sample.SmoothNoise(lambda3=0.5)))
        stock_s, smooth_s = statistics.median(stock), statistics.median(smooth)
        print(f"| {datetime.date.today()} | {name} | torch {torch.__version__}, diffusers {diffusers.__version__} | {options.model}, "
              f"{str(dtype).removeprefix('torch.')} | {options.frames} x {options.size} px | {options.steps}-step CFG sampling, "
              f"median of {options.eq5_overhead} interleaved | stock DDIM {stock_s:.2f} s | with Eq. 5 {smooth_s:.2f} s | "
              f"Eq. 5 overhead {smooth_s / stock_s - 1:+.1%} |")


if __name__ == "__main__":
    main()
