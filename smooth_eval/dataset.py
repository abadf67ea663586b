"""The videos and edit prompts of an evaluation, from a prompt table.

Two layouts:
- the LOVEU-TGVE-2023 release: `LOVEU-TGVE-2023_Dataset.csv` (columns `Video name`, `Our GT
  caption`, `Style Change Caption`, `Object Change Caption`, `Background Change Caption`,
  `Multiple Changes Caption`) and the frames at `{videos}/{split}/480p_frames/{video}/*.jpg`,
  split being DAVIS_480p, youtube_480p or videvo_480p. The benchmark's script takes fixed row
  slices of that table; here a row is a video when it has edit captions (the rows between the
  slices have none) and its split is the folder its frames are in. Edits are named as the
  benchmark names its submission folders: style, object, background, multiple.
- a simple CSV for one's own clips: `video,source_prompt,edit_prompt` and optionally `edit`
  (a name, default edit1, edit2, ... per video) and `split` (default "custom"); `video` is a
  video file (any format FFmpeg reads) or a folder of *.jpg frames, relative to `{videos}`.
  One row per edit.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import pathlib
import re

LOVEU_SPLITS = ("DAVIS_480p", "youtube_480p", "videvo_480p")
LOVEU_EDITS = {  # the benchmark's submission folder name of each caption column
    "style": "Style Change Caption",
    "object": "Object Change Caption",
    "background": "Background Change Caption",
    "multiple": "Multiple Changes Caption",
}
LOVEU_SOURCE = "Our GT caption"
SIMPLE_COLUMNS = ("video", "source_prompt", "edit_prompt")
FRAMES_FPS = 8  # the frame rate given to a folder of frames (the metrics do not depend on it)


class DatasetError(ValueError):
    """A prompt table that cannot be read: the message names the file, the row and the fix."""


@dataclasses.dataclass(frozen=True)
class Edit:
    name: str
    prompt: str


@dataclasses.dataclass(frozen=True)
class Video:
    name: str
    split: str
    source: pathlib.Path  # a video file or a folder of *.jpg frames
    source_prompt: str
    edits: tuple[Edit, ...]


def safe_name(text: str) -> str:
    """A folder-safe form of a video or edit name (the outputs are folders named after them)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._")
    return name or "unnamed"


def read_prompts(path: str | pathlib.Path, videos: str | pathlib.Path) -> list[Video]:
    """The videos of a prompt table, in its order; the layout is told by its columns."""
    path, videos = pathlib.Path(path), pathlib.Path(videos)
    if not path.is_file():
        raise DatasetError(f"--prompts {path}: no such file")
    if not videos.is_dir():
        raise DatasetError(f"--videos {videos}: no such folder")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0]) if rows else set()
    if {"Video name", LOVEU_SOURCE, *LOVEU_EDITS.values()} <= columns:
        found = _loveu(rows, videos, path)
    elif set(SIMPLE_COLUMNS) <= columns:
        found = _simple(rows, videos, path)
    else:
        raise DatasetError(
            f"{path} has the columns {sorted(columns)}: give the LOVEU-TGVE-2023 release's "
            f"LOVEU-TGVE-2023_Dataset.csv, or a CSV with the columns {', '.join(SIMPLE_COLUMNS)} "
            "(and optionally edit, split)"
        )
    if not found:
        raise DatasetError(f"{path} lists no video with an edit prompt")
    return found


def _loveu(rows: list[dict], videos: pathlib.Path, path: pathlib.Path) -> list[Video]:
    found = []
    for number, row in enumerate(rows, start=2):  # line numbers as a spreadsheet shows them
        name = (row.get("Video name") or "").strip()
        edits = tuple(Edit(edit, (row.get(column) or "").strip()) for edit, column in LOVEU_EDITS.items())
        if not name or not any(edit.prompt for edit in edits):
            continue  # a section label or a blank row
        folders = [videos / split / "480p_frames" / name for split in LOVEU_SPLITS]
        existing = [folder for folder in folders if folder.is_dir()]
        if not existing:
            raise DatasetError(
                f"{path} line {number}: no frames of {name!r} at {videos}/<split>/480p_frames/{name}/ "
                f"(split: {', '.join(LOVEU_SPLITS)}): give --videos the release's data folder"
            )
        missing = [edit.name for edit in edits if not edit.prompt]
        if missing:
            raise DatasetError(f"{path} line {number}: {name!r} has no {', '.join(missing)} caption")
        if any(video.name == name for video in found):
            raise DatasetError(f"{path} line {number}: {name!r} is listed twice")
        source = existing[0]
        found.append(Video(name, source.parents[1].name, source, (row.get(LOVEU_SOURCE) or "").strip(), edits))
    return found


def _simple(rows: list[dict], videos: pathlib.Path, path: pathlib.Path) -> list[Video]:
    grouped: dict[tuple[str, str], dict] = {}
    for number, row in enumerate(rows, start=2):
        values = {key: (row.get(key) or "").strip() for key in (*SIMPLE_COLUMNS, "edit", "split")}
        if not any(values.values()):
            continue
        empty = [key for key in SIMPLE_COLUMNS if not values[key]]
        if empty:
            raise DatasetError(f"{path} line {number}: {', '.join(empty)} is empty")
        source = videos / values["video"]
        if not source.exists():
            raise DatasetError(f"{path} line {number}: {source} does not exist (video is relative to --videos {videos})")
        split = safe_name(values["split"]) if values["split"] else "custom"
        entry = grouped.setdefault((split, values["video"]), {"source": source, "prompt": values["source_prompt"], "edits": []})
        if entry["prompt"] != values["source_prompt"]:
            raise DatasetError(f"{path} line {number}: {values['video']} has two source prompts; give it one")
        edit = values["edit"] or f"edit{len(entry['edits']) + 1}"
        if any(safe_name(e.name) == safe_name(edit) for e in entry["edits"]):
            raise DatasetError(f"{path} line {number}: {values['video']} has two edits named {edit!r}")
        entry["edits"].append(Edit(edit, values["edit_prompt"]))
    found, owners = [], {}
    for (split, video), entry in grouped.items():
        name = safe_name(pathlib.PurePath(video).stem if entry["source"].is_file() else video)
        if (split, name) in owners:
            raise DatasetError(f"{path}: {video} and {owners[(split, name)]} would share the output folder {split}/{name}")
        owners[(split, name)] = video
        found.append(Video(name, split, entry["source"], entry["prompt"], tuple(entry["edits"])))
    return found


def load_source(source: pathlib.Path) -> tuple[bytes, str, int]:
    """The source as a video file for ComfyUI's Load Video: (bytes, file suffix, frame count).

    A video file is passed as it is (its frames are decoded here once, to count them and to
    fail early on a file FFmpeg cannot read); a folder of *.jpg frames (LOVEU's layout) becomes
    a lossless video (FFV1 in Matroska), so the model sees the JPGs' decoded pixels exactly.
    """
    import av
    import numpy as np
    from PIL import Image

    if source.is_dir():
        paths = sorted(source.glob("*.jpg"))
        if not paths:
            raise DatasetError(f"no *.jpg frames in {source}")
        frames = []
        for frame_path in paths:
            try:
                with Image.open(frame_path) as image:
                    frames.append(np.asarray(image.convert("RGB")))
            except Exception as error:  # Pillow's UnidentifiedImageError, OSError on a truncated file
                raise DatasetError(f"{frame_path} cannot be read as an image ({error})") from None
        if len({frame.shape for frame in frames}) != 1:
            raise DatasetError(f"the frames in {source} are not all of one size")
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="matroska") as container:
            stream = container.add_stream("ffv1", rate=FRAMES_FPS)
            stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
            stream.pix_fmt = "bgr0"  # 8-bit RGB, lossless
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return buffer.getvalue(), ".mkv", len(frames)
    data = source.read_bytes()
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise DatasetError(f"{source} has no video stream")
            count = sum(1 for _ in container.decode(video=0))
    except DatasetError:
        raise
    except Exception as error:  # PyAV's InvalidDataError and kin
        raise DatasetError(f"{source} cannot be read as a video ({error})") from None
    if count == 0:
        raise DatasetError(f"{source} has no frames")
    return data, source.suffix.lower() or ".mp4", count
