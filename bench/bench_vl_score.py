"""VL score speed: the vectorised Eq. 6 (smooth_core.metrics.vl_score) against a brute-force
loop over the (k+1)^2 window offsets, on 24 frames of 4 x 64 x 64 latents (a 512 px video).

Usage: python bench/bench_vl_score.py [--device cpu|cuda] [--repeats N]
Prints a Markdown table row set for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from smooth_core import metrics  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    video = torch.randn(24, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(options.device)
    fast = timed(lambda: metrics.vl_score(video).item(), options.repeats, options.device)
    slow = timed(lambda: brute_force(video), 1, options.device)
    diff = abs(metrics.vl_score(video.double()).item() - brute_force(video.double()))
    device = torch.cuda.get_device_name() if options.device == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"| {datetime.date.today()} | {device} | torch {torch.__version__} | 24 x 4 x 64 x 64 | "
          f"{fast * 1000:.1f} ms ({24 / fast:.0f} frames/s) | {slow * 1000:.0f} ms | {slow / fast:.0f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
