"""The effect of Smooth Noise (Eq. 5) per sampler: VL score of the InstructPix2Pix-video workflow
(workflows/api/ip2p_video_zero_smooth_patch.json) with the patch off (lambda3 = 0) and on
(lambda3 = 0.5), same seed, on the sample clip, for each k-diffusion sampler.

Usage: .host/venv/bin/python bench/bench_eq5_samplers.py [--settings quick|tiny] [--host DIR]
Starts the project's ComfyUI (scripts/setup_host.sh made it) and prints a Markdown table for
bench/RESULTS.md. ddim runs on the ddim_uniform scheduler (the paper's DDIM, where the patch is the
Smooth Noise Sampler); the others on the workflow's karras. On the embedded random-weight model the
scores measure what the correction does to the frames, not image quality.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
from comfy_host import HOST, ComfyServer, load_workflow  # noqa: E402
from make_sample_video import render_frames, write_video  # noqa: E402
from quick_settings import QUICK, TINY, quick  # noqa: E402

SAMPLERS = ["ddim", "euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m",
            "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm", "uni_pc", "ipndm", "deis"]
# Node ids of the workflow: the patch, the scheduler, the sampler choice, the VL score.
PATCH, SCHEDULER, SAMPLER, VL_SCORE = "8", "10", "12", "17"
SAMPLE = "smoothvideo_sample.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", choices=("quick", "tiny"), default="quick")
    parser.add_argument("--host", default=str(HOST), help="the ComfyUI host folder (default: %(default)s)")
    options = parser.parse_args()
    settings = QUICK if options.settings == "quick" else TINY
    base = quick(load_workflow("ip2p_video_zero_smooth_patch"), settings)
    base["1"]["inputs"]["file"] = SAMPLE
    rows = []
    started = time.time()
    with ComfyServer(pathlib.Path(options.host)) as server:
        write_video(server.base / "input" / SAMPLE, render_frames())
        version = server.get("/system_stats")["system"]["comfyui_version"]
        for name in SAMPLERS:
            scores = {}
            for lambda3 in (0.0, 0.5):
                prompt = quick(base, {})
                prompt[SAMPLER]["inputs"]["sampler_name"] = name
                prompt[SCHEDULER]["inputs"]["scheduler"] = "ddim_uniform" if name == "ddim" else "karras"
                prompt[PATCH]["inputs"]["lambda3"] = lambda3
                entry = server.run(prompt, timeout=1800)
                scores[lambda3] = entry["outputs"][VL_SCORE]["vl_score"][0]
            rows.append((name, prompt[SCHEDULER]["inputs"]["scheduler"], scores[0.0], scores[0.5]))
            print(f"{name}: off {scores[0.0]:.4f} on {scores[0.5]:.4f}", file=sys.stderr, flush=True)
    frames = settings["SmoothVideo_SelectVideoFrames"]
    steps = settings["BasicScheduler"]["steps"]
    print(f"Smooth Noise (Eq. 5) per sampler, {datetime.date.today()}, ComfyUI {version}, CPU "
          f"({platform.processor() or platform.machine()}), tiny random-weight InstructPix2Pix, sample clip "
          f"{frames['count']} frames at {frames['width']} px, {steps} steps, text 7.5 / image 1.5, seed 42, "
          f"lambda1 1000; {time.time() - started:.0f} s in all\n")
    print("| sampler | scheduler | VL off (lambda3 0) | VL on (lambda3 0.5) | on - off |")
    print("|---|---|---|---|---|")
    for name, scheduler, off, on in rows:
        print(f"| {name} | {scheduler} | {off:.4f} | {on:.4f} | {on - off:+.4f} |")


if __name__ == "__main__":
    main()
