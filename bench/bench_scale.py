"""The Tune-A-Video workflow at Stable Diffusion 1.5 size, stage by stage: memory and time.

Runs `workflows/api/tune_a_video_smooth.json` (or, with --txt2img, plain txt2img of the same batch:
KSampler with CFG 7.5, ddim, then VAE Decode) over HTTP on a fresh ComfyUI server of the project's
host, with the full-size random-weight SD1.5 checkpoint (`scripts/make_tiny_checkpoints.py
--full-size`, written here when missing: ~1.7 GB, ~25 s) and a synthetic clip of the requested frames
and size. The server loads the memory probe in `bench/scale_probe/` (no node; it records each
stage's peak RSS, glibc's peak bytes in use and, on CUDA, torch's peak allocated / reserved, at the
boundaries ComfyUI itself announces: node starts and progress steps). Prints a Markdown table, one
row a stage, and writes every record as JSON.

    .host/venv/bin/python bench/bench_scale.py --frames 8 --size 256 [--gradient-checkpointing]
    .host/venv/bin/python bench/bench_scale.py --frames 8 --size 256 --txt2img
    .host/venv/bin/python bench/bench_scale.py --frames 24 --size 512 --gradient-checkpointing --steps 1 --sample-steps 1
    .host/venv/bin/python bench/bench_scale.py ... --pack DIR     # another checkout of the pack (a before/after pair)
    python3 bench/bench_scale.py ... --device cuda                # on a GPU (bench/run_gpu.sh)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from comfy_host import HOST, PACK_NAME, ComfyServer, load_workflow  # noqa: E402
from make_sample_video import render_frames, write_video  # noqa: E402
from make_tiny_checkpoints import FULL_SIZE  # noqa: E402
from quick_settings import quick  # noqa: E402

PROBE = REPO / "bench" / "scale_probe"
GIB = 1024.0

# class_type -> the stage's name in the table (other nodes are summed as "other nodes").
STAGES = {
    "CheckpointLoaderSimple": "checkpoint load",
    "VAEEncode": "VAE encode",
    "SmoothVideo_InflateUNet": "Inflate UNet",
    "SmoothVideo_OneShotTune": "tune",
    "SmoothVideo_DDIMInvertVideo": "inversion",
    "SamplerCustom": "sampling",
    "KSampler": "sampling",
    "VAEDecode": "VAE decode",
    "SmoothVideo_VLScore": "VL Score",
}


def ensure_checkpoint(host: pathlib.Path, python: pathlib.Path, name: str) -> float:
    """Writes the checkpoint into the host's models when missing (the full-size one, or the tiny
    ones for a rehearsal); returns the seconds it took."""
    folder = host / "base" / "models" / "checkpoints"
    started = time.time()
    command = [str(python), str(REPO / "scripts" / "make_tiny_checkpoints.py"), "--comfy", str(host / "ComfyUI"),
               "--out", str(folder)]
    if name == FULL_SIZE:
        subprocess.run(command + ["--full-size"], check=True)
    elif not (folder / name).exists():
        subprocess.run(command, check=True)
    return time.time() - started


def bench_base(host: pathlib.Path, pack: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """A --base-directory of its own (the host's models, this pack checkout in custom_nodes)."""
    base = work / "base"
    if base.exists():
        shutil.rmtree(base)
    for folder in ("input", "output", "user", "custom_nodes"):
        (base / folder).mkdir(parents=True)
    (base / "models").symlink_to(host / "base" / "models")
    (base / "custom_nodes" / PACK_NAME).symlink_to(pack.resolve())
    return base


def workflow_prompt(args, clip: str, save_name: str) -> dict:
    prompt = load_workflow("tune_a_video_smooth")
    return quick(prompt, {
        "CheckpointLoaderSimple": {"ckpt_name": args.checkpoint},
        "LoadVideo": {"file": clip},
        "SmoothVideo_SelectVideoFrames": {"count": args.frames, "width": args.size, "height": args.size},
        "SmoothVideo_OneShotTune": {"steps": args.steps, "checkpoint_every": 0, "save_name": save_name,
                                    "gradient_checkpointing": args.gradient_checkpointing},
        "SmoothVideo_DDIMInvertVideo": {"steps": args.sample_steps},
        "BasicScheduler": {"steps": args.sample_steps},
    })


def txt2img_prompt(args) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": args.checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple rolling over a wooden table", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": args.size, "height": args.size, "batch_size": args.frames}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 0,
            "steps": args.sample_steps, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def stages(records: list[dict], prompt: dict, steps: int) -> list[dict]:
    """The probe's records as the table's stages, in the order they ran. A record covers the stage
    its boundary started: an "executing" one from a node's start to its first progress step (for
    One-shot Tune: its set-up, which reports step 0 before the first step), a "progress" one from
    that step to the next boundary (for One-shot Tune: tuning step value + 1)."""
    rows: dict[str, dict] = {}
    previous_rss = previous_malloc = None
    for record in records:
        node = record["node"]
        if record["event"] == "start" or node is None:
            previous_rss, previous_malloc = record["rss_mib"], record.get("malloc_mib")
            continue
        kind = prompt[str(node)]["class_type"]
        name = STAGES.get(kind, "other nodes")
        if name == "tune":
            value = record["value"]
            if record["event"] == "executing":
                name = "tune: set-up"
            elif value < steps:
                name = f"tuning step {value + 1}"
            else:
                name = "tune: save, tuned MODEL"
        row = rows.setdefault(name, {"stage": name, "seconds": 0.0, "peak_rss_mib": 0.0, "peak_malloc_mib": 0.0,
                                     "peak_above_start_mib": 0.0, "peak_malloc_above_start_mib": 0.0})
        row["seconds"] += record["end"] - record["start"]
        row["peak_rss_mib"] = max(row["peak_rss_mib"], record["peak_rss_mib"])
        row["peak_malloc_mib"] = max(row["peak_malloc_mib"], record["peak_malloc_mib"])
        row["rss_end_mib"] = record["rss_mib"]
        if previous_rss is not None:
            row["peak_above_start_mib"] = max(row["peak_above_start_mib"], record["peak_rss_mib"] - previous_rss)
        if previous_malloc is not None:  # glibc's bytes in use: freed memory reused does not hide a peak
            row["peak_malloc_above_start_mib"] = max(row["peak_malloc_above_start_mib"],
                                                     record["peak_malloc_mib"] - previous_malloc)
        for key in ("cuda_peak_allocated_mib", "cuda_peak_reserved_mib"):
            if key in record:
                row[key] = max(row.get(key, 0.0), record[key])
        if "cuda_allocated_mib" in record:
            row["cuda_allocated_end_mib"] = record["cuda_allocated_mib"]
        previous_rss, previous_malloc = record["rss_mib"], record.get("malloc_mib")
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="tuning steps (default %(default)s)")
    parser.add_argument("--sample-steps", type=int, default=2, help="DDIM inversion and sampling steps (default %(default)s)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--txt2img", action="store_true", help="plain txt2img of the same batch instead of the workflow")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--host", type=pathlib.Path, default=HOST, help="a host folder of scripts/setup_host.sh")
    parser.add_argument("--pack", type=pathlib.Path, default=REPO, help="the pack checkout the server loads")
    parser.add_argument("--checkpoint", default=FULL_SIZE, help="a checkpoint in the host's models/checkpoints")
    parser.add_argument("--label", default="", help="a note for the table's title (e.g. the commit)")
    parser.add_argument("--json", type=pathlib.Path, help="where the records go (default out/bench_scale/<run>.json)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="one more ComfyUI command-line option (repeat it; e.g. --server-arg=--front-end-root=DIR)")
    parser.add_argument("--timeout", type=float, default=4 * 3600)
    args = parser.parse_args()

    host = args.host.resolve()
    python = host / "venv" / "bin" / "python" if (host / "venv").exists() else pathlib.Path(sys.executable)
    checkpoint_seconds = ensure_checkpoint(host, python, args.checkpoint)
    mode = "txt2img" if args.txt2img else ("grad. checkpointing" if args.gradient_checkpointing else "default")
    run = f"{args.frames}x{args.size}_{mode.replace(' ', '').replace('.', '')}_{os.getpid()}"
    work = REPO / "out" / "bench_scale" / run
    base = bench_base(host, args.pack, work)
    clip = f"scale_{args.frames}x{args.size}.mp4"
    write_video(base / "input" / clip, render_frames(args.frames, args.size))
    save_name = f"bench_scale_{run}"
    prompt = txt2img_prompt(args) if args.txt2img else workflow_prompt(args, clip, save_name)

    server = ComfyServer(host_dir=host, base=base, extra_custom_nodes=(PROBE,), cpu=args.device == "cpu",
                         log_path=work / "comfyui.log", extra_args=tuple(args.server_arg))
    started = time.time()
    with server:
        version = server.version
        server.post("/smoothvideo_scale_probe/reset")
        entry = server.run(prompt, timeout=args.timeout)
        records = server.get("/smoothvideo_scale_probe/records")
        device_name = server.get("/system_stats")["devices"][0]["name"]
    wall = time.time() - started
    for leftover in (host / "base" / "models" / "smoothvideo").glob(save_name + "*"):
        leftover.unlink()

    rows = stages(records, prompt, args.steps)
    tune_text = next((t for out in entry["outputs"].values() for t in out.get("text", []) if "tuned" in t), "")
    result = {
        "date": datetime.date.today().isoformat(), "device": device_name, "cpu": platform.processor() or platform.machine(),
        "comfyui": version, "pack": str(args.pack.resolve()), "label": args.label, "frames": args.frames,
        "size": args.size, "steps": args.steps, "sample_steps": args.sample_steps, "mode": mode,
        "checkpoint_write_seconds": checkpoint_seconds, "wall_seconds": wall, "stages": rows, "records": records,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in records), "tune_summary": tune_text,
    }
    out = args.json or work.with_suffix(".json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)

    cuda = any("cuda_peak_allocated_mib" in r for r in rows)
    print(f"\n{args.frames} x {args.size} px, {mode}, {args.steps} tuning / {args.sample_steps} inversion and "
          f"sampling steps; {device_name}, ComfyUI {version}; {result['date']}; {args.label}")
    print(f"whole run {wall:.0f} s, peak RSS {result['peak_rss_mib'] / GIB:.2f} GiB; records in {out}")
    columns = ["stage", "s", "peak RSS GiB", "RSS after GiB", "peak above start GiB", "peak malloc GiB",
               "peak malloc above start GiB"]
    if cuda:
        columns += ["CUDA peak allocated GiB", "CUDA peak reserved GiB"]
    print("| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
    for row in rows:
        cells = [row["stage"], f"{row['seconds']:.1f}", f"{row['peak_rss_mib'] / GIB:.2f}",
                 f"{row['rss_end_mib'] / GIB:.2f}", f"{row['peak_above_start_mib'] / GIB:.2f}",
                 f"{row['peak_malloc_mib'] / GIB:.2f}", f"{row['peak_malloc_above_start_mib'] / GIB:.2f}"]
        if cuda:
            cells += [f"{row.get('cuda_peak_allocated_mib', 0) / GIB:.2f}", f"{row.get('cuda_peak_reserved_mib', 0) / GIB:.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
