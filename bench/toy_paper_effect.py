"""The paper's effect at toy scale, on CPU, through the project's real core code.

  python bench/toy_paper_effect.py [--seeds 3] [--steps 150] [--lr 1e-3] [--ddim-steps 20] ...

For each seed: a small diffusers UNet2DConditionModel (random init with that seed) is
inflated (Tune-A-Video) and, for each arm lambda2 in {0 (Tune-A-Video), 0.2 (the paper)},
a fresh fork is tuned (`smooth_core.tune.Tuner`, same seed in both arms) on one fixed
synthetic clip of smooth, moving latents with a "source" prompt embedding. The clip is
then DDIM-inverted with the empty (all-zero) prompt through the tuned model
(`invert.ddim_invert`) and sampled with an "edit" prompt and classifier-free guidance
(`sample.ddim_sample`), without and with Eq. 5 (`SmoothNoise(lambda3=0.5)`). On the
generated latents it measures the VL score (`metrics.vl_score`) and the mean
second-difference roughness mean |2 x[n] - x[n-1] - x[n+1]| (`losses.cross_frame_difference`).
Prints a Markdown table (mean ± std over seeds) with date, device and settings.
Threads: OMP_NUM_THREADS (or TORCH_NUM_THREADS) if set, else torch's default.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from smooth_core import inflate, invert, losses, metrics, sample, tune  # noqa: E402

TOY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)
TOKENS, EMBED_DIM = 4, 32


def make_clip(frames: int, size: int, shift: int, seed: int = 0) -> torch.Tensor:
    """(1, f, 4, size, size): a window sliding `shift` latent pixels per frame (right and down by half)
    over a larger blurred random field, normalised to mean 0, std 1 (like SD latents)."""
    g = torch.Generator().manual_seed(seed)
    span = size + shift * (frames - 1)
    field = torch.randn(1, 4, span + 8, span + 8, generator=g)
    blur = torch.exp(-torch.arange(-4, 5.0).square() / (2 * 2.0**2))
    kernel = (blur[:, None] * blur[None, :] / blur.sum() ** 2).expand(4, 1, 9, 9)
    field = F.conv2d(field, kernel, groups=4)[0]  # (4, span, span)
    field = (field - field.mean()) / field.std()
    clip = [field[:, (n * shift) // 2 : (n * shift) // 2 + size, n * shift : n * shift + size] for n in range(frames)]
    return torch.stack(clip).unsqueeze(0)


def make_prompts(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source and edit prompt embeddings (1, TOKENS, EMBED_DIM), fixed random; the empty prompt is zeros."""
    g = torch.Generator().manual_seed(seed)
    source, edit = torch.randn(2, 1, TOKENS, EMBED_DIM, generator=g)
    return source, edit, torch.zeros(1, TOKENS, EMBED_DIM)


def base_model(seed: int) -> inflate.VideoUNet:
    torch.manual_seed(seed)
    return inflate.inflate_unet(UNet2DConditionModel(**TOY_UNET))


def tune_arm(base: inflate.VideoUNet, clip, source, lambda2: float, seed: int, steps: int, lr: float):
    """A fresh fork tuned with Eq. 4 (lambda2 = 0: Tune-A-Video). Returns (model, first and last-10 mean MSE)."""
    model = base.fork()
    config = tune.TuneConfig(steps=steps, learning_rate=lr, lambda2=lambda2, seed=seed, mixed_precision="no")
    records = tune.Tuner(model, clip, source, config).run()
    model.eval()
    tail = records[-10:]
    return model, records[0].mse, sum(r.mse for r in tail) / len(tail)


def invert_clip(model, clip, empty, ddim_steps: int) -> torch.Tensor:
    """Tune-A-Video's inversion: DDIM with the empty prompt, no guidance."""
    with torch.no_grad():
        return invert.ddim_invert(lambda x, t: model(x, t, empty), clip, ddim_steps)


def generate(model, noise, edit, empty, ddim_steps: int, cfg: float, eq5: bool, lambda3: float) -> torch.Tensor:
    """DDIM sampling with the edit prompt and CFG (one batched call for uncond + cond), Eq. 5 on the post-CFG eps."""
    context = torch.cat([empty, edit])

    def eps_fn(x, t):
        uncond, cond = model(torch.cat([x, x]), t, context).chunk(2)
        return sample.classifier_free_guidance(uncond, cond, cfg)

    smooth = sample.SmoothNoise(lambda3=lambda3) if eq5 else None
    with torch.no_grad():
        return sample.ddim_sample(eps_fn, noise, ddim_steps, smooth=smooth)


def measure(latents: torch.Tensor, k: int) -> dict[str, float]:
    return {
        "vl": metrics.vl_score(latents, k).item(),
        "rough": losses.cross_frame_difference(latents).abs().mean().item(),
        "std": latents.std().item(),
    }


def fmt(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (UNet init and tuning noise)")
    parser.add_argument("--steps", type=int, default=150, help="tuning steps per arm")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ddim-steps", type=int, default=20, help="DDIM steps of inversion and of sampling")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--lambda3", type=float, default=0.5)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=16, help="latent height = width")
    parser.add_argument("--shift", type=int, default=2, help="latent pixels the window moves per frame")
    parser.add_argument("--k", type=int, default=4, help="VL score window slack (the paper's 8 is for 64x64 latents)")
    options = parser.parse_args()
    threads = os.environ.get("TORCH_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))

    start = time.perf_counter()
    clip = make_clip(options.frames, options.size, options.shift)
    source, edit, empty = make_prompts()
    rows: dict[tuple[float, bool], list[dict]] = {}
    fits = {0.0: [], 0.2: []}
    for seed in range(options.seeds):
        base = base_model(seed)
        for lambda2 in (0.0, 0.2):
            model, mse_first, mse_last = tune_arm(base, clip, source, lambda2, seed, options.steps, options.lr)
            fits[lambda2].append((mse_first, mse_last))
            noise = invert_clip(model, clip, empty, options.ddim_steps)
            for eq5 in (False, True):
                latents = generate(model, noise, edit, empty, options.ddim_steps, options.cfg, eq5, options.lambda3)
                rows.setdefault((lambda2, eq5), []).append(measure(latents, options.k))
            scores = ", ".join(f"Eq. 5 {'on' if eq5 else 'off'} VL {rows[(lambda2, eq5)][-1]['vl']:.4f} "
                               f"roughness {rows[(lambda2, eq5)][-1]['rough']:.4f}" for eq5 in (False, True))
            print(f"seed {seed} lambda2 {lambda2}: tuning MSE {mse_first:.3f} -> {mse_last:.3f} (last 10 steps); "
                  f"{scores}; {time.perf_counter() - start:.0f} s", file=sys.stderr)
    elapsed = time.perf_counter() - start

    ref = measure(clip, options.k)
    print(f"{datetime.date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; run time {elapsed:.0f} s.")
    print(f"Settings: UNet {TOY_UNET['block_out_channels']} channels, layers_per_block 1, cross_attention_dim "
          f"{EMBED_DIM}, random init (seed); clip {options.frames} x 4 x {options.size} x {options.size}, window "
          f"shift {options.shift} px/frame; seeds 0..{options.seeds - 1}; tuning {options.steps} steps, AdamW lr "
          f"{options.lr}, cross_frame loss L1, lambda1 1000, fp32; DDIM {options.ddim_steps} steps (inversion with "
          f"the zero 'empty' prompt, sampling with the edit prompt), CFG {options.cfg}; Eq. 5 lambda3 "
          f"{options.lambda3}; VL score k = {options.k}.\n")
    print("| lambda2 | Eq. 5 | VL score | roughness mean abs(D2 x) | latent std | tuning MSE first -> last 10 |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| source clip | - | {ref['vl']:.4f} | {ref['rough']:.4f} | {ref['std']:.3f} | - |")
    for (lambda2, eq5), results in rows.items():
        fit = f"{fmt([a for a, _ in fits[lambda2]], 3)} -> {fmt([b for _, b in fits[lambda2]], 3)}"
        print(f"| {lambda2:g}{' (Tune-A-Video)' if lambda2 == 0 else ' (paper)'} | {'on' if eq5 else 'off'} | "
              f"{fmt([r['vl'] for r in results], 4)} | {fmt([r['rough'] for r in results], 4)} | "
              f"{fmt([r['std'] for r in results], 3)} | {fit} |")


if __name__ == "__main__":
    main()
