"""Writes a small dataset in the LOVEU-TGVE-2023 release's layout, for the evaluation's sample run.

`{out}/LOVEU-TGVE-2023_Dataset.csv` (the release's columns, with its section-label and blank
rows) and `{out}/{split}/480p_frames/{video}/00000.jpg, ...`: synthetic clips of
scripts/make_sample_video.py (a disc moving over a panning texture), different per video.
"""

from __future__ import annotations

import argparse
import csv
import pathlib

from make_sample_video import render_frames
from PIL import Image

# (split, video, source caption, style, object, background, multiple)
SAMPLE = (
    ("DAVIS_480p", "yellow-ball", "A yellow ball rolls over a tiled floor.", "A yellow ball rolls over a tiled floor, watercolor.",
     "A red apple rolls over a tiled floor.", "A yellow ball rolls over a wooden table.", "A red apple rolls over a wooden table, watercolor."),
    ("DAVIS_480p", "sun-disc", "A bright disc drifts across a mosaic.", "A bright disc drifts across a mosaic, pencil sketch.",
     "A full moon drifts across a mosaic.", "A bright disc drifts across a night sky.", "A full moon drifts across a night sky, pencil sketch."),
    ("youtube_480p", "gold-coin", "A gold coin slides over colourful tiles.", "A gold coin slides over colourful tiles, oil painting.",
     "An orange slides over colourful tiles.", "A gold coin slides over sand.", "An orange slides over sand, oil painting."),
)
COLUMNS = ("Video name", "Our GT caption", "Style Change Caption", "Object Change Caption",
           "Background Change Caption", "Multiple Changes Caption")


def write_sample_dataset(out: pathlib.Path, frames: int = 12, size: int = 128, videos: int = len(SAMPLE)) -> pathlib.Path:
    """Writes the clips and the CSV; returns the CSV's path."""
    rows, section = [], None
    for seed, (split, name, *captions) in enumerate(SAMPLE[:videos], start=21):
        if split != section:
            if section is not None:
                rows.append({})
            rows.append({"Video name": split})  # the release's section label rows
            section = split
        rows.append(dict(zip(COLUMNS, [name, *captions])))
        folder = out / split / "480p_frames" / name
        folder.mkdir(parents=True, exist_ok=True)
        for index, frame in enumerate(render_frames(frames=frames, size=size, seed=seed)):
            Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=95)
    table = out / "LOVEU-TGVE-2023_Dataset.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    options = parser.parse_args()
    print(write_sample_dataset(options.out, options.frames, options.size))


if __name__ == "__main__":
    main()
