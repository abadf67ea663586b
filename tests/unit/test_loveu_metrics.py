"""smooth_core.loveu against a float64 brute force on a tiny random transformers CLIPModel.

The test saves the model, a tokenizer (a character-level vocabulary, no merges) and the
benchmark's image processor settings to a folder, loads them back through LoveuClip as a
user's folder would be, and compares with a reference that shares nothing with the code
under test but the weights and the tokenizer: frames resized by hand (Pillow's bicubic,
480x480, then the processor's shortest-edge 224 bicubic resize, centre crop, scale and
normalise), the CLIP towers run in float64, the cosines and pair sums as Python loops.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from smooth_core import loveu  # noqa: E402
from tiny_clip import CROP, MEAN, STD, save_tiny_clip  # noqa: E402


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), logit_scale=37.0)


@pytest.fixture(scope="module")
def clip(clip_folder):
    return loveu.LoveuClip(clip_folder)


def _clip_frames(folder, count, size=(64, 48), seed=1):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    images = []
    for index in range(count):  # a moving gradient over a fixed noise texture
        shift = np.roll(base, 3 * index, axis=1).astype(np.int32)
        images.append(np.clip(shift + 10 * index, 0, 255).astype(np.uint8))
    return loveu.write_frames(images, folder)


def _pixels_by_hand(path):
    with Image.open(path) as image:
        image = image.convert("RGB").resize((480, 480), Image.BICUBIC)  # Pillow's default for RGB
    image = image.resize((CROP, CROP), Image.BICUBIC)  # shortest edge 224 of a square frame
    array = np.asarray(image, dtype=np.float64) / 255.0
    array = (array - np.array(MEAN)) / np.array(STD)
    return torch.from_numpy(array).permute(2, 0, 1)


def _reference(clip_folder, paths, prompt):
    model = transformers.CLIPModel.from_pretrained(clip_folder).double().eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(clip_folder)
    pixels = torch.stack([_pixels_by_hand(p) for p in paths])
    ids = tokenizer([prompt], return_tensors="pt", padding=True)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # transformers builds the causal mask in the default dtype
    try:
        with torch.no_grad():
            images = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
            text = model.text_projection(model.text_model(**ids).pooler_output)[0]
    finally:
        torch.set_default_dtype(default)
    images = [[float(v) for v in row] for row in images]
    text = [float(v) for v in text]

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))

    scale = math.exp(float(model.logit_scale.detach()))
    clip_t = sum(scale * cos(e, text) for e in images) / len(images)
    pairs = [cos(images[i], images[j]) for i, j in itertools.permutations(range(len(images)), 2)]
    return clip_t, sum(pairs) / len(pairs)


def test_scores_match_float64_brute_force(clip, clip_folder, tmp_path):
    paths = _clip_frames(tmp_path / "video", 5)
    prompt = "a red apple rolling over a wooden table"
    scores = loveu.score_video(clip, tmp_path / "video", prompt)
    clip_t, clip_f = _reference(clip_folder, paths, prompt)
    assert scores["clip_text"] == pytest.approx(clip_t, abs=1e-4 * 37)
    assert scores["clip_frame"] == pytest.approx(clip_f, abs=1e-5)
    assert scores["clip_frame_x100"] == pytest.approx(100 * clip_f, abs=1e-3)
    assert abs(clip_f) < 0.999  # the frames differ: the check would notice a constant 1
    # and the benchmark's own call (scripts/run_eval.py's clip_score_text), word for word
    frames = loveu.read_frames(tmp_path / "video")
    inputs = clip.processor(text=[prompt], images=frames, return_tensors="pt", padding=True)
    with torch.no_grad():
        benchmark = clip.model(**inputs).logits_per_image.detach().cpu().numpy().mean()
    assert scores["clip_text"] == pytest.approx(float(benchmark), abs=1e-4 * 37)


def test_processor_preprocessing_is_the_benchmarks(clip, tmp_path):
    paths = _clip_frames(tmp_path / "video", 2)
    frames = loveu.read_frames(tmp_path / "video")
    assert [f.size for f in frames] == [(480, 480)] * 2
    pixels = clip.processor(images=frames, return_tensors="pt")["pixel_values"].double()
    by_hand = torch.stack([_pixels_by_hand(p) for p in paths])
    assert (pixels - by_hand).abs().max() < 1e-5


def test_identical_frames_give_clip_f_one_and_order_does_not_matter(clip, tmp_path):
    paths = _clip_frames(tmp_path / "video", 4)
    frames = loveu.read_frames(tmp_path / "video")
    assert clip.clip_frame([frames[0]] * 3) == pytest.approx(1.0, abs=1e-6)
    shuffled = [frames[i] for i in (2, 0, 3, 1)]
    assert clip.clip_frame(shuffled) == pytest.approx(clip.clip_frame(frames), abs=1e-6)
    assert clip.clip_text(shuffled, "a cat") == pytest.approx(clip.clip_text(frames, "a cat"), abs=1e-4)
    assert len(paths) == 4


def test_clear_errors(clip, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        loveu.LoveuClip(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*.jpg frames"):
        loveu.read_frames(tmp_path)
    _clip_frames(tmp_path / "one", 1)
    with pytest.raises(ValueError, match="at least 2 frames"):
        clip.clip_frame(loveu.read_frames(tmp_path / "one"))
