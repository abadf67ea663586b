"""The pack in a real ComfyUI server, driven over HTTP as users and API clients do."""

import json
import pathlib
import re

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
