"""Writes the demo's sample clip: a short, smooth, deterministic synthetic video (H.264 mp4).

A textured background pans slowly while a bright disc moves across it, so neighbouring
frames are shifted copies of each other (a high VL score) and shuffling them is visible.
"""

from __future__ import annotations

import argparse
import math
import pathlib

import av
import numpy as np


def render_frames(frames: int = 16, size: int = 128, seed: int = 7) -> np.ndarray:
    """(frames, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    world = size + 4 * frames
    yy, xx = np.mgrid[0:world, 0:world].astype(np.float32) / world
    texture = rng.random((world // 8 + 1, world // 8 + 1, 3)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8, 1), np.float32))[:world, :world]
    background = 0.55 * texture + 0.45 * np.stack([xx, yy, 1.0 - xx], axis=-1)
    out = np.empty((frames, size, size, 3), np.uint8)
    py, px = np.mgrid[0:size, 0:size].astype(np.float32)
    for n in range(frames):
        shift = 2 * n
        frame = background[shift : shift + size, shift : shift + size].copy()
        cx = size * (0.2 + 0.6 * n / max(frames - 1, 1))
        cy = size * (0.5 + 0.2 * math.sin(2 * math.pi * n / frames))
        disc = np.clip((size * 0.15 - np.hypot(px - cx, py - cy)) / 2.0, 0.0, 1.0)[..., None]
        frame = frame * (1 - disc) + disc * np.array([1.0, 0.85, 0.2], np.float32)
        out[n] = (np.clip(frame, 0, 1) * 255).round().astype(np.uint8)
    return out


def write_video(path: pathlib.Path, frames: np.ndarray, fps: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "medium"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--fps", type=int, default=8)
    options = parser.parse_args()
    write_video(options.out, render_frames(options.frames, options.size), options.fps)
    print(options.out)


if __name__ == "__main__":
    main()
