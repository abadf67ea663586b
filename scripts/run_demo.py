"""The main job: the Tune-A-Video + smooth loss workflow on the embedded default model and clip.

Starts the project's ComfyUI server (scripts/setup_host.sh made it), writes the synthetic
sample clip into its input folder, queues workflows/api/<workflow>.json through the HTTP API
like any client (with the quick CPU settings of scripts/quick_settings.py unless
--paper-settings), waits for it, copies the output video, loss curve and scores to --out,
prints where they are, and stops the server.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import time

from comfy_host import REPO, ComfyServer, load_workflow
from make_sample_video import render_frames, write_video
from quick_settings import QUICK, TINY, quick

SAMPLE = "smoothvideo_sample.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default="tune_a_video_smooth", help="a name in workflows/api/ (default: %(default)s)")
    parser.add_argument("--paper-settings", action="store_true", help="keep the workflow's own settings (24 frames at 512 px, 500 steps: GPU)")
    parser.add_argument("--tiny", action="store_true", help="the integration tests' TINY settings (4 frames at 80 px, 4 steps)")
    parser.add_argument("--out", default=str(REPO / "out" / "demo"), help="where results are copied (default: %(default)s)")
    options = parser.parse_args()
    out = pathlib.Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    prompt = load_workflow(options.workflow)
    if not options.paper_settings:
        prompt = quick(prompt, TINY if options.tiny else QUICK)
    started = time.time()
    with ComfyServer() as server:
        write_video(server.base / "input" / SAMPLE, render_frames())
        print(f"demo: ComfyUI {server.get('/system_stats')['system']['comfyui_version']} at {server.url}, "
              f"running {options.workflow} (log: {server.log_path})", flush=True)
        entry = server.run(prompt, timeout=3600)
        scores, written = {}, []
        for node_id, ui in entry["outputs"].items():
            title = prompt[node_id].get("_meta", {}).get("title", prompt[node_id]["class_type"])
            for text in ui.get("text", []):
                print(f"demo: [{title}] {text}")
            if "vl_score" in ui:
                scores[title] = {k: ui[k][0] for k in ("vl_score", "clip_frame", "clip_text") if ui[k][0] != -1.0}
            for item in ui.get("images", []):
                if item["type"] != "output":  # node previews (temp) repeat what a Save node wrote
                    continue
                source = server.base / item["type"] / item["subfolder"] / item["filename"]
                shutil.copy2(source, out / item["filename"])
                written.append(out / item["filename"])
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    for path in written + [out / "scores.json"]:
        print(f"demo: wrote {path}")
    print(f"demo: done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
