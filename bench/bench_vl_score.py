"""VL score speed: the vectorised Eq. 6 (smooth_core.metrics.vl_score) against a brute-force
loop over the (k+1)^2 window offsets, on 24 frames of 4 x 64 x 64 latents (a 512 px video).

Usage: python bench/bench_vl_score.py [--device cpu|cuda] [--repeats N]
Prints a Markdown table row set for bench/RESULTS.md.

With --encode FRAMES PX it instead times the VL Score node's whole job on FRAMES frames of
PX x PX pixels: VAE-encode them in chunks of 16 (as the node does; the Stable Diffusion VAE's
configuration with random weights, diffusers' AutoencoderKL), then score: frames per second.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import time

import diffusers
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from smooth_core import metrics  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_tune import device_label  # noqa: E402


def brute_force(video: torch.Tensor, k: int = 8) -> float:
    f, c, H, W = video.shape
    h, w, half = H - k, W - k, k // 2
    total = 0.0
    for n in range(1, f):
        cur = video[n, :, half : half + h, half : half + w].flatten()
        best = max(
            torch.nn.functional.cosine_similarity(cur, video[n - 1, :, i : i + h, j : j + w].flatten(), dim=0).item()
            for i in range(k + 1)
            for j in range(k + 1)
        )
        total += best
    return total / (f - 1)


def timed(fn, repeats: int, device: str) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)


def encode_and_score(frames: int, size: int, device: str, repeats: int, chunk_size: int = 16) -> None:
    from diffusers import AutoencoderKL

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE).to(device, dtype).eval()
    images = torch.rand(frames, 3, size, size, device=device, dtype=dtype) * 2 - 1

    @torch.inference_mode()
    def job() -> float:
        latents = torch.cat([
            vae.encode(images[start : start + chunk_size]).latent_dist.mean.float()
            for start in range(0, frames, chunk_size)
        ])
        return metrics.vl_score(latents[None]).item()

    seconds = timed(job, repeats, device)
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device == "cuda" else "n/a"
    print(f"| {datetime.date.today()} | {device_label(torch.device(device))} | torch {torch.__version__}, diffusers {diffusers.__version__} | SD VAE, {str(dtype)[6:]} | "
          f"{frames} x {size} px | {seconds:.2f} s | {frames / seconds:.1f} frames/s | {peak} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encode", type=int, nargs=2, metavar=("FRAMES", "PX"))
    options = parser.parse_args()
    if options.encode:
        encode_and_score(*options.encode, options.device, options.repeats)
        return
    video = torch.randn(24, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(options.device)
    fast = timed(lambda: metrics.vl_score(video).item(), options.repeats, options.device)
    slow = timed(lambda: brute_force(video), 1, options.device)
    diff = abs(metrics.vl_score(video.double()).item() - brute_force(video.double()))
    print(f"| {datetime.date.today()} | {device_label(torch.device(options.device))} | torch {torch.__version__}, diffusers {diffusers.__version__} | 24 x 4 x 64 x 64 | "
          f"{fast * 1000:.1f} ms ({24 / fast:.0f} frames/s) | {slow * 1000:.0f} ms | {slow / fast:.0f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
