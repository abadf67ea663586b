"""The pack in a real ComfyUI server, driven over HTTP as users and API clients do."""

import json
import pathlib
import re
import shutil

import pytest

from build_ui_workflows import build_all
from comfy_host import HOSTS, ComfyError, load_workflow, node_output

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def declared_node_ids() -> set[str]:
    """Node ids declared in nodes/*.py (read from the source: the pack cannot be imported without ComfyUI)."""
    ids = set()
    for path in (REPO / "nodes").glob("*.py"):
        ids.update("SmoothVideo_" + m for m in re.findall(r'node_id=NODE_PREFIX \+ "(\w+)"', path.read_text()))
    return ids


def vl_prompt(video: str, k: int = 8, chunk_size: int = 16, count: int = 12) -> dict:
    prompt = load_workflow("vl_score")
    prompt["1"]["inputs"]["file"] = video
    prompt["3"]["inputs"]["count"] = count
    prompt["5"]["inputs"].update(k=k, chunk_size=chunk_size)
    return prompt


def test_every_node_of_the_pack_is_registered(server):
    ids = declared_node_ids()
    assert {"SmoothVideo_VLScore", "SmoothVideo_SelectVideoFrames"} <= ids
    info = server.get("/object_info")
    assert ids <= set(info), f"missing nodes: {ids - set(info)}; log:\n{server.log()[-3000:]}"
    for node_id in ids:
        assert info[node_id]["category"] == "SmoothVideo"
    log = server.log()
    assert "ComfyUI-SmoothVideo" in log and not re.search(r"IMPORT FAILED\)?:? .*SmoothVideo", log)


def test_vl_score_of_a_smooth_clip_over_http(server, sample_video):
    entry = server.run(vl_prompt(sample_video[0]))
    ui = node_output(entry, "5")
    score = ui["vl_score"][0]
    assert -1.0 <= score <= 1.0
    assert ui["text"][0].startswith(f"VL score: {score:.4f} (12 frames, k=8)")
    assert ui["clip_frame"] == [-1.0] and ui["clip_text"] == [-1.0]
    # Encoding in chunks of 5 frames gives the same score (the chunking is not in the math).
    rechunked = node_output(server.run(vl_prompt(sample_video[0], chunk_size=5)), "5")["vl_score"][0]
    assert rechunked == pytest.approx(score, abs=1e-6)  # other batch sizes: float32 summation order, ~8 eps of a score <= 1


def test_shuffling_frames_lowers_the_vl_score(server, sample_video, shuffled_video):
    smooth = node_output(server.run(vl_prompt(sample_video[0])), "5")["vl_score"][0]
    shuffled = node_output(server.run(vl_prompt(shuffled_video)), "5")["vl_score"][0]
    assert shuffled < smooth


@pytest.mark.parametrize(
    "change, message",
    [
        ({"5": {"k": 16}}, "lower k below 16"),
        ({"3": {"count": 1}}, "needs at least 2 frames"),
        ({"3": {"start": 50}}, "past the end of the video"),
        ({"3": {"count": 40}}, "lower count or stride"),
        ({"3": {"width": 100}}, "multiples of 8"),
    ],
)
def test_bad_input_gives_a_clear_error_and_the_server_goes_on(server, sample_video, change, message):
    prompt = vl_prompt(sample_video[0])
    for node_id, inputs in change.items():
        prompt[node_id]["inputs"].update(inputs)
    with pytest.raises(ComfyError, match=message):
        server.run(prompt)
    assert server.version in HOSTS


@pytest.mark.first_host  # built from its /object_info; on the others the browser test opens them
def test_ui_workflows_match_their_api_twins(server):
    built = build_all(server.get("/object_info"))
    assert built, "no API workflows found"
    for path, text in built.items():
        assert path.exists(), f"{path.name} missing: run scripts/build_ui_workflows.py"
        assert json.loads(path.read_text()) == json.loads(text), f"{path.name} is stale: run scripts/build_ui_workflows.py"


def test_workflows_are_listed_as_templates(server):
    templates = server.get("/api/workflow_templates")
    assert "vl_score" in templates["ComfyUI-SmoothVideo"]
    served = server.get("/api/workflow_templates/ComfyUI-SmoothVideo/vl_score.json")
    assert {n["type"] for n in served["nodes"]} >= {"LoadVideo", "SmoothVideo_VLScore"}


def test_clip_t_with_an_sd1_checkpoints_clip_is_refused(server, sample_video):
    """The checkpoint holds no text projection for clip_l: CLIP-T from it would be meaningless."""
    prompt = vl_prompt(sample_video[0], count=4)
    prompt["5"]["inputs"].update(clip=["4", 1], text="a yellow ball")
    with pytest.raises(ComfyError, match="CLIP-T with this CLIP would be meaningless: its text encoder is SD1.x's clip_l"):
        server.run(prompt)
    prompt["5"]["inputs"]["text"] = ""  # no CLIP-T asked: nothing to refuse
    assert node_output(server.run(prompt), "5")["clip_text"] == [-1.0]


@pytest.fixture(scope="module")
def loveu_clip_folder(server):
    """A tiny random transformers CLIP in this host's models/smoothvideo_clip/."""
    from tiny_clip import save_tiny_clip

    folder = server.base / "models" / "smoothvideo_clip" / "tiny_test_clip"
    save_tiny_clip(folder)
    yield folder
    shutil.rmtree(folder)  # not left in the host's list of CLIP folders


def benchmark_scores(folder, paths, prompt):
    """showlab/loveu-tgve-2023 scripts/run_eval.py's clip_score_text and clip_score_frame, step by step,
    on the frame files `paths` (CLIPModel and AutoProcessor from `folder`)."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    model, processor = CLIPModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    frames = [Image.open(x) for x in sorted(paths)]
    frames = [i.resize((480, 480)) for i in frames]
    inputs = processor(text=[prompt], images=frames, return_tensors="pt", padding=True)
    with torch.no_grad():
        clip_t = model(**inputs).logits_per_image.detach().cpu().numpy().mean()
        features = model.get_image_features(**processor(images=frames, return_tensors="pt")).numpy().astype(np.float64)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, 0)
    return float(clip_t), float(similarity.sum() / (len(frames) * (len(frames) - 1)))


def test_loveu_clip_scores_are_the_benchmarks(server, sample_video, loveu_clip_folder):
    prompt = vl_prompt(sample_video[0], count=5)
    prompt["6"] = {"class_type": "SmoothVideo_LoadLoveuClip", "inputs": {"folder": loveu_clip_folder.name}}
    prompt["5"]["inputs"].update(loveu_clip=["6", 0], text="a yellow ball rolling")
    prompt["7"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "test/loveu_frames"}}
    entry = server.run(prompt)
    ui = node_output(entry, "5")
    paths = [server.base / "output" / i["subfolder"] / i["filename"] for i in node_output(entry, "7")["images"]]
    assert len(paths) == 5  # the node's frames, as SaveImage writes them (8 bits)
    clip_t, clip_f = benchmark_scores(loveu_clip_folder, paths, "a yellow ball rolling")
    assert ui["clip_text"][0] == pytest.approx(clip_t, abs=1e-4 * 37)  # the tiny model's logit scale is 37
    assert ui["clip_frame"][0] == pytest.approx(clip_f, abs=1e-6)
    assert abs(clip_f) < 0.9999 and abs(clip_t) > 1e-3  # the frames differ and the text counts: not constants
    prompt["5"]["inputs"]["clip"] = ["4", 1]
    with pytest.raises(ComfyError, match="connect loveu_clip, or clip_vision \\(and clip\\), not both"):
        server.run(prompt)
