"""CLIP-T and CLIP-F exactly as the LOVEU-TGVE-2023 evaluation computes them.

The benchmark's script (showlab/loveu-tgve-2023, scripts/run_eval.py) does, per edited video:
- reads the frames `*.jpg` of the video's folder in sorted order and resizes each with
  `PIL.Image.resize((480, 480))` (Pillow's default filter);
- CLIP-T (`clip_score_text`): `processor(text=[prompt], images=frames, return_tensors="pt",
  padding=True)`, one `CLIPModel` forward, the mean of `logits_per_image` over the frames
  (`logit_scale.exp() * cos`, so about 100 x the cosine for openai/clip-vit-large-patch14;
  computed here from the same image and text features, the vision tower once for both scores);
- CLIP-F (`clip_score_frame`): `model.get_image_features` of `processor(images=frames)`,
  sklearn's cosine-similarity matrix, the diagonal set to 0, the sum divided by f (f - 1):
  the mean cosine over ordered pairs i != j (the leaderboard prints it x100).

The model and processor come from a local folder (`CLIPModel.from_pretrained(folder)`, what
the benchmark loads as "openai/clip-vit-large-patch14"); nothing is downloaded.
"""

from __future__ import annotations

import pathlib

import torch

from . import metrics

SIZE = (480, 480)  # (width, height) the benchmark resizes every frame to
FRAME_GLOB = "*.jpg"


class LoveuClip:
    """A transformers CLIPModel and its processor, loaded from a local folder."""

    def __init__(self, folder: str | pathlib.Path, device: str = "cpu"):
        folder = pathlib.Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} is not a transformers CLIP folder (no config.json): give the folder of "
                "openai/clip-vit-large-patch14 as saved by CLIPModel.save_pretrained / "
                "a Hugging Face snapshot (config.json, the weights, the tokenizer and "
                "preprocessor_config.json); nothing is downloaded"
            )
        from transformers import AutoProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.device = device

    def image_features(self, frames: list) -> torch.Tensor:
        """`get_image_features` of `processor(images=frames)`: (f, d) float32."""
        inputs = self.processor(images=frames, return_tensors="pt").to(self.device)
        with torch.no_grad():
            return self.model.get_image_features(**inputs)

    def clip_text(self, frames: list, prompt: str, features: torch.Tensor | None = None) -> float:
        """CLIP-T: the mean over the frames of `logits_per_image`, `logit_scale.exp() * cos(image, text)`.

        CLIPModel's forward computes those logits from `get_image_features` and
        `get_text_features`; they are taken here the same way, from the frames' image features
        (`features`, when CLIP-F already computed them, so the vision tower runs once per video).
        """
        if features is None:
            features = self.image_features(frames)
        inputs = self.processor(text=[prompt], return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            text = self.model.get_text_features(**inputs)[0]
            scale = float(self.model.logit_scale.exp())
        return float(metrics.clip_text_alignment(features.double(), text.double(), scale=scale))

    def clip_frame(self, frames: list, features: torch.Tensor | None = None) -> float:
        """CLIP-F: the mean cosine of the frames' image features over ordered pairs i != j.

        The cosines are taken in float64 from the model's float32 features; sklearn's, in the
        benchmark, stay in float32, a difference of float32 rounding (about 1e-7).
        """
        if len(frames) < 2:
            raise ValueError(f"CLIP-F needs at least 2 frames, got {len(frames)}")
        if features is None:
            features = self.image_features(frames)
        return float(metrics.clip_frame_consistency(features.double()))


def read_frames(folder: str | pathlib.Path) -> list:
    """The frames of one edited video as the benchmark reads them: sorted `*.jpg`, resized to 480x480."""
    from PIL import Image

    paths = sorted(pathlib.Path(folder).glob(FRAME_GLOB))
    if not paths:
        raise FileNotFoundError(f"no {FRAME_GLOB} frames in {folder}")
    frames = []
    for path in paths:
        with Image.open(path) as image:
            frames.append(image.resize(SIZE))
    return frames


def frames_from_arrays(arrays) -> list:
    """Frames given as uint8 HxWx3 arrays, resized as `read_frames` resizes the benchmark's JPGs."""
    from PIL import Image

    return [Image.fromarray(array).resize(SIZE) for array in arrays]


def write_frames(images, folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Write frames (uint8 HxWx3 arrays or PIL images) as 00000.jpg, 00001.jpg, ... (the submission layout)."""
    from PIL import Image

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        path = folder / f"{index:05d}.jpg"
        image.convert("RGB").save(path)
        written.append(path)
    return written


def score_video(clip: LoveuClip, folder: str | pathlib.Path, prompt: str) -> dict:
    """CLIP-T, CLIP-F and CLIP-F x100 (the leaderboard's figure) of the frames in `folder`."""
    frames = read_frames(folder)
    features = clip.image_features(frames)
    clip_f = clip.clip_frame(frames, features)
    return {"clip_text": clip.clip_text(frames, prompt, features), "clip_frame": clip_f, "clip_frame_x100": 100.0 * clip_f}
