"""The training-free InstructPix2Pix video workflows (DESIGN.md section 4) over HTTP on the
real server with the tiny InstructPix2Pix checkpoint: per frame ("InstructVideo2Video-zero")
and Text2Video-Zero's cross-frame attention, each with stock DDIM and with the Smooth Noise
Sampler (Eq. 5), and the comparison of the four.

They run with the TINY settings of scripts/quick_settings.py (4 frames of 80 px, 4 DDIM
steps) through the same graphs that carry the paper's settings.
"""

import shutil
import uuid

import av
import pytest
from safetensors.torch import load_file

from comfy_host import ComfyError, load_workflow, node_output
from quick_settings import TINY, quick

pytestmark = pytest.mark.integration

PER_FRAME, PER_FRAME_SMOOTH = "ip2p_video_zero", "ip2p_video_zero_smooth"
T2V_ZERO, T2V_ZERO_SMOOTH = "video_ip2p_t2v_zero", "video_ip2p_t2v_zero_smooth"
# Node ids shared by the four single workflows.
SAMPLE, SAVE_VIDEO, VL_SCORE, CROSS_FRAME = "13", "16", "17", "8"
# The comparison: one arm per first node id (sampler; its SaveVideo at +3, VL Score at +4).
ARMS = {"20": PER_FRAME, "30": PER_FRAME_SMOOTH, "40": T2V_ZERO, "50": T2V_ZERO_SMOOTH}


def tiny_workflow(name: str, video: str) -> dict:
    """The workflow with TINY settings on `video`, and a SaveLatent "s<id>" after every sampler."""
    prompt = quick(load_workflow(name), TINY)
    prompt["1"]["inputs"]["file"] = video
    for node_id, node in list(prompt.items()):
        if node["class_type"] == "SamplerCustomAdvanced":
            prompt["s" + node_id] = {
                "class_type": "SaveLatent",
                "inputs": {"samples": [node_id, 0], "filename_prefix": f"test/{uuid.uuid4().hex[:8]}"},
            }
    return prompt


def saved_latent(server, entry, sampler_id):
    item = node_output(entry, "s" + sampler_id)["latents"][0]
    return load_file(str(server.base / "output" / item["subfolder"] / item["filename"]))["latent_tensor"]


def video_frames(server, entry, node_id) -> list:
    item = node_output(entry, node_id)["images"][0]
    with av.open(str(server.base / item["type"] / item["subfolder"] / item["filename"])) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def frame_difference(latents, reference):
    """Per frame: max |latents - reference| relative to the reference's largest value (the
    random-weight model's latents reach ~100, so absolute tolerances would mean little)."""
    return (latents - reference).abs().amax(dim=(1, 2, 3)) / reference.abs().max()


def executed_anew(entry, node_id):
    cached = [data["nodes"] for kind, data in entry["status"]["messages"] if kind == "execution_cached"]
    return all(node_id not in nodes for nodes in cached)


@pytest.fixture(scope="module")
def runs(server, sample_video):
    """Each single workflow run once on the sample clip (TINY settings), on first use."""
    done = {}

    def run(name):
        if name not in done:
            done[name] = server.run(tiny_workflow(name, sample_video[0]))
        return done[name]

    return run


def test_cross_frame_node_is_listed_with_tooltips(server):
    info = server.get("/object_info")["SmoothVideo_CrossFrameAttention"]
    assert info["display_name"] == "Cross-frame Attention (Text2Video-Zero)"
    assert info["output"] == ["MODEL"] and info["output_tooltips"][0]
    assert "Text2Video-Zero" in info["description"]
    required = info["input"]["required"]
    assert required["chunk_size"][1]["default"] == 8 and required["chunk_size"][1]["min"] == 2
    assert all(spec[1].get("tooltip") for spec in required.values())


@pytest.mark.parametrize("name", [PER_FRAME, PER_FRAME_SMOOTH, T2V_ZERO, T2V_ZERO_SMOOTH])
def test_workflow_runs_over_http_and_returns_every_frame(server, runs, name):
    entry = runs(name)
    frames = video_frames(server, entry, SAVE_VIDEO)
    assert len(frames) == 4 and frames[0].shape == (80, 80, 3)
    assert saved_latent(server, entry, SAMPLE).shape == (4, 4, 10, 10)
    assert "(4 frames" in node_output(entry, VL_SCORE)["text"][0]
    assert -1.0 <= node_output(entry, VL_SCORE)["vl_score"][0] <= 1.0


def test_same_seed_same_output(server, runs, sample_video):
    first = runs(T2V_ZERO_SMOOTH)
    # The same clip under another name: ComfyUI must run the whole graph again.
    copy = f"copy_{uuid.uuid4().hex[:6]}.mp4"
    shutil.copy(server.base / "input" / sample_video[0], server.base / "input" / copy)
    again = server.run(tiny_workflow(T2V_ZERO_SMOOTH, copy))
    assert executed_anew(again, SAMPLE), "ComfyUI served the sampler from its cache: the repeat proves nothing"
    # A rerun: float32 summation order at most, ~8 eps of the latents' scale and of a score <= 1.
    assert frame_difference(saved_latent(server, again, SAMPLE), saved_latent(server, first, SAMPLE)).max() < 1e-6
    assert node_output(again, VL_SCORE)["vl_score"][0] == pytest.approx(node_output(first, VL_SCORE)["vl_score"][0], abs=1e-6)


def test_comparison_runs_the_four_from_one_seed_side_by_side(server, runs, sample_video):
    entry = server.run(tiny_workflow("ip2p_compare", sample_video[0]))
    grid = video_frames(server, entry, "64")
    assert len(grid) == 4 and grid[0].shape == (2 * 80 + 8, 2 * 80 + 8, 3)
    scores = {name: node_output(entry, str(int(arm) + 4))["vl_score"][0] for arm, name in ARMS.items()}
    assert all(-1.0 <= score <= 1.0 for score in scores.values())
    assert len(set(scores.values())) == 4, scores
    for arm, name in ARMS.items():
        assert len(video_frames(server, entry, str(int(arm) + 3))) == 4
        # Each arm is its own workflow: same seed, same scheduler, same result (~8 float32 eps, as a rerun).
        assert frame_difference(saved_latent(server, entry, arm), saved_latent(server, runs(name), SAMPLE)).max() < 1e-6
    # Frame 0 attends only to itself under cross-frame attention: the same as per frame, up to
    # the float32 difference of ComfyUI's UNet and the diffusers one (the random-weight model
    # amplifies it: its latents reach ~100); the other frames differ.
    difference = frame_difference(saved_latent(server, entry, "40"), saved_latent(server, entry, "20"))
    assert difference[0] < 2e-5 and difference[1:].min() > 1e-2, difference


def still_video(prompt: dict) -> dict:
    """The prompt on a still video: frame 0 of the clip repeated 4 times."""
    prompt["3"]["inputs"]["count"] = 1
    prompt["30"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 4}}
    prompt["7"]["inputs"]["pixels"] = ["30", 0]
    return prompt


def test_cross_frame_equals_per_frame_on_a_still_video_and_differs_on_a_moving_one(server, runs, sample_video):
    still = {name: saved_latent(server, server.run(still_video(tiny_workflow(name, sample_video[0]))), SAMPLE)
             for name in (PER_FRAME, T2V_ZERO)}
    assert still[PER_FRAME].shape == (4, 4, 10, 10)
    # Equal up to the float32 difference of ComfyUI's UNet and the diffusers one.
    still_difference = frame_difference(still[T2V_ZERO], still[PER_FRAME])
    assert still_difference.max() < 2e-5, still_difference

    moving = frame_difference(*(saved_latent(server, runs(name), SAMPLE) for name in (T2V_ZERO, PER_FRAME)))
    assert moving[1:].min() > 1e-2, moving


def test_chunk_size_does_not_change_the_result(server, sample_video):
    """6 frames in chunks of 2 (frame 0 + 1 new frame per UNet call, 5 calls) or all at once."""
    latents = {}
    for chunk_size in (2, 8):
        prompt = tiny_workflow(T2V_ZERO, sample_video[0])
        prompt["3"]["inputs"]["count"] = 6
        prompt[CROSS_FRAME]["inputs"]["chunk_size"] = chunk_size
        latents[chunk_size] = saved_latent(server, server.run(prompt), SAMPLE)
    assert latents[2].shape == (6, 4, 10, 10)
    # Other batch sizes, other float summation order: about 1e-6 of the latents' scale (~100).
    assert frame_difference(latents[2], latents[8]).max() < 1e-5


def test_a_cross_frame_model_is_refused_where_it_does_not_fit(server, sample_video):
    again = tiny_workflow(T2V_ZERO, sample_video[0])
    again["18"] = {"class_type": "SmoothVideo_CrossFrameAttention", "inputs": {"model": [CROSS_FRAME, 0], "chunk_size": 8}}
    again["9"]["inputs"]["model"] = ["18", 0]
    with pytest.raises(ComfyError, match="already inflated"):
        server.run(again)

    workflow = tiny_workflow(T2V_ZERO, sample_video[0])
    tune = {node_id: workflow[node_id] for node_id in ("1", "3", "4", "5", CROSS_FRAME)}
    tune["18"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["4", 2]}}
    tune["19"] = {
        "class_type": "SmoothVideo_OneShotTune",
        "inputs": {
            "model": [CROSS_FRAME, 0], "latent": ["18", 0], "positive": ["5", 0], "steps": 2, "learning_rate": 1e-4,
            "lambda2": 0.2, "lambda1": 1000.0, "variant": "cross_frame", "seed": 1, "checkpoint_every": 0,
            "save_name": f"refused_{uuid.uuid4().hex[:6]}", "gradient_checkpointing": False,
        },
    }
    with pytest.raises(ComfyError, match="nothing to tune"):
        server.run(tune)
    assert server.get("/system_stats")["system"]
