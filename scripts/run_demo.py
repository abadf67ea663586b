"""The main job: runs the pack's main workflow on the embedded default model and sample clip.

Starts the project's ComfyUI server (scripts/setup_host.sh made it), writes the sample clip
into its input folder, queues workflows/api/<workflow>.json through the HTTP API like any
client, waits for it, prints the scores and where the outputs are, and stops the server.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import time

from comfy_host import REPO, ComfyServer, load_workflow, node_output
from make_sample_video import render_frames, write_video

SAMPLE = "smoothvideo_sample.mp4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflow", default="vl_score", help="a name in workflows/api/ (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO / "out" / "demo"), help="where results are copied")
    options = parser.parse_args()
    out = pathlib.Path(options.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    started = time.time()
    with ComfyServer() as server:
        write_video(server.base / "input" / SAMPLE, render_frames())
        print(f"demo: ComfyUI {server.get('/system_stats')['system']['comfyui_version']} at {server.url}")
        entry = server.run(load_workflow(options.workflow), timeout=1800)
        results = {}
        for node_id, ui in entry["outputs"].items():
            for text in ui.get("text", []):
                print(f"demo: {text}")
            for key in ("vl_score", "clip_frame", "clip_text"):
                if key in ui and ui[key][0] != -1.0:
                    results.setdefault(node_id, {})[key] = ui[key][0]
            for kind in ("images", "animated", "video", "gifs"):
                for item in ui.get(kind, []) if isinstance(ui.get(kind), list) else []:
                    if isinstance(item, dict) and "filename" in item:
                        source = server.base / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
                        shutil.copy2(source, out / item["filename"])
                        print(f"demo: wrote {out / item['filename']}")
    (out / "scores.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"demo: scores in {out / 'scores.json'} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
