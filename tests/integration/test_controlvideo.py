"""ControlVideo (thu-ml/controlvideo) with the smooth loss, queued over HTTP on the real server:
Inflate UNet (ControlVideo) with the stock ControlNet nodes and the stock Canny on the frames, in
tuning, inversion and sampling; the three controlvideo workflows at TINY settings; tuned weights
saved and loaded; control batches that do not fit the video refused.

The tiny SD1.5 ControlNet is written by scripts/make_tiny_checkpoints.py."""

import json
import pathlib
import uuid

import av
import pytest
from safetensors.torch import load_file

from comfy_host import ComfyError, node_output
from graphs import run_host_script, save_latent, tiny_unet_weights, tiny_workflow

pytestmark = pytest.mark.integration
FLOAT32_EPS = 1.19e-7
BASELINE, SMOOTH, COMPARE = "controlvideo_baseline", "controlvideo_smooth", "controlvideo_compare"
# Node ids of the workflows: tune, invert, sample, save video, VL score; Canny; the two Apply ControlNet.
TUNE, INVERT, SAMPLE, SAVE_VIDEO, VL_SCORE = "10", "11", "14", "17", "18"
CANNY, APPLY_SOURCE, APPLY_EDIT = "21", "22", "23"


def renamed(name, video, **changes):
    """The workflow at TINY settings on `video`, its tuned files under fresh names, with a SaveLatent
    "s<id>" after every sampler; `changes` maps node id -> inputs to update."""
    prompt = tiny_workflow(name, video)
    for node_id, node in list(prompt.items()):
        if node["class_type"] == "SmoothVideo_OneShotTune":
            node["inputs"]["save_name"] = f"{node['inputs']['save_name']}_{uuid.uuid4().hex[:6]}"
        if node["class_type"] == "SamplerCustom":
            prompt["s" + node_id] = save_latent([node_id, 0])
    for node_id, inputs in changes.items():
        prompt[node_id]["inputs"].update(inputs)
    return prompt


def saved(server, entry, node_id):
    item = node_output(entry, "s" + node_id)["latents"][0]
    return load_file(str(server.base / "output" / item["subfolder"] / item["filename"]))["latent_tensor"]


def video_frames(server, entry, node_id) -> int:
    item = node_output(entry, node_id)["images"][0]
    with av.open(str(server.base / item["type"] / item["subfolder"] / item["filename"])) as container:
        return sum(1 for _ in container.decode(video=0))


def relative(a, b):
    return (a - b).abs().max().item() / b.abs().max().item()


@pytest.fixture(scope="module")
def runs(server, sample_video):
    done = {}

    def run(name, **changes):
        key = (name, repr(sorted(changes.items())))
        if key not in done:
            prompt = renamed(name, sample_video[0], **changes)
            done[key] = (server.run(prompt), prompt)
        return done[key]

    return run


CHECK = pathlib.Path(__file__).resolve().parent / "controlvideo_check.py"


def test_every_transformer_block_is_controlvideos_block_in_float64(host):
    """Key-frame attention (key frame 2 of 5, two videos per batch), the temporal branch with its
    1x1 layer beside it, none in the middle block: each block against ControlVideo's, written out
    (controlvideo_check.py, in the host's own Python)."""
    result = json.loads(run_host_script(host, CHECK, timeout=600))
    assert result["dtype"] == "torch.float64"
    blocks = result["blocks"]
    assert [b["temporal"] for b in blocks] == [not b["middle"] for b in blocks] and any(b["middle"] for b in blocks)
    for block in blocks:  # exact arithmetic: float64 rounding (measured ~3e-15 of the scale); a wrong key frame gives ~1
        assert block["difference"] <= 1e-10 * block["scale"], block


def test_node_is_listed(server):
    info = server.get("/object_info")["SmoothVideo_InflateControlVideo"]
    assert info["display_name"] == "Inflate UNet (ControlVideo)"
    assert info["input"]["required"]["key_frame"][1]["default"] == 0
    assert info["output"] == ["MODEL"]


@pytest.mark.parametrize("name", [BASELINE, SMOOTH])
def test_workflow_runs_and_tunes_controlvideos_set(server, runs, name):
    entry, prompt = runs(name)
    assert video_frames(server, entry, SAVE_VIDEO) == 4
    assert -1.0 <= node_output(entry, VL_SCORE)["vl_score"][0] <= 1.0
    losses = node_output(entry, TUNE)["losses"]
    assert len(losses) == 4
    lambda2 = 0.0 if name == BASELINE else 0.2
    for total, mse, smooth in losses:  # Eq. 4, the smooth term weighted by the workflow's lambda2
        assert total == pytest.approx(mse + lambda2 * smooth, rel=1e-5)
    save_name = prompt[TUNE]["inputs"]["save_name"]
    weights = load_file(str(server.base / "models" / "smoothvideo" / f"{save_name}.safetensors"))
    kinds = {key.split(".transformer_blocks.0.")[1].rsplit(".", 1)[0] for key in weights}
    # thu-ml/controlvideo's trainable_modules: attn1.to_out, attn_temp, conv_temp (norm_temp: none exists)
    assert kinds == {"attn1.to_out.0", "attn_temp.to_q", "attn_temp.to_k", "attn_temp.to_v", "attn_temp.to_out.0",
                     "conv_temp"}, kinds
    # temporal layers in every transformer block but the middle one; attn1.to_out in all of them
    assert any(key.startswith("mid_block.") and ".attn1.to_out." in key for key in weights)
    assert not any(key.startswith("mid_block.") and "_temp." in key for key in weights)
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    assert weights[f"{block}.conv_temp.weight"].dim() == 4
    # Every tuned tensor moved from where it started (4 AdamW steps at lr 1e-4 move each by ~4e-4):
    # attn1.to_out from the checkpoint's (its bias too, through ComfyUI's bias function), attn_temp
    # from its copy of attn1, conv_temp from zero.
    start = tiny_unet_weights(server)
    attn1 = {name: start[f"input_blocks.1.1.transformer_blocks.0.attn1.{name}"].float()
             for name in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")}
    for name, initial in attn1.items():
        for tuned in ([f"{block}.attn_temp.{name}"] + ([f"{block}.attn1.{name}"] if "to_out" in name else [])):
            moved = (weights[tuned] - initial).abs().max().item()
            assert 1e-4 < moved < 1e-2, (tuned, moved)
    assert weights[f"{block}.conv_temp.weight"].abs().max() > 1e-4 and weights[f"{block}.conv_temp.bias"].abs().max() > 1e-4


def test_gradient_checkpointing_tunes_the_same(server, runs):
    """The temporal branch's hooks (norm1 kept, added at attn1.to_out) run again in the recompute."""
    plain, _ = runs(SMOOTH)
    checkpointed, _ = runs(SMOOTH, **{TUNE: {"gradient_checkpointing": True}})
    for a, b in zip(node_output(plain, TUNE)["losses"], node_output(checkpointed, TUNE)["losses"]):
        assert a == pytest.approx(b, rel=1e-4)
    assert relative(saved(server, checkpointed, SAMPLE), saved(server, plain, SAMPLE)) <= 1e-4


def test_compare_runs_both_arms_from_one_source(server, runs):
    entry, prompt = runs(COMPARE)
    smooth, baseline = saved(server, entry, "14"), saved(server, entry, "34")
    assert smooth.shape == baseline.shape == (4, 4, 10, 10)
    assert relative(smooth, baseline) > 1e-4  # lambda2 changes the tune, hence the edit
    for node_id in ("18", "38"):
        assert -1.0 <= node_output(entry, node_id)["vl_score"][0] <= 1.0
    assert video_frames(server, entry, "52") == 4


def test_the_control_changes_the_output_and_strength_zero_is_no_control(server, runs):
    """Strength 0 against 1 on the same seed: different edits; strength 0 is the workflow with no
    ControlNet at all (Apply ControlNet's conditioning replaced by the prompts themselves)."""
    full, _ = runs(SMOOTH)
    zero, _ = runs(SMOOTH, **{APPLY_SOURCE: {"strength": 0.0}, APPLY_EDIT: {"strength": 0.0}})
    none, _ = runs(SMOOTH, **{TUNE: {"positive": ["6", 0]}, INVERT: {"conditioning": ["6", 0]},
                              SAMPLE: {"positive": ["7", 0], "negative": ["8", 0]}})
    full, zero, none = (saved(server, entry, SAMPLE) for entry in (full, zero, none))
    assert relative(full, zero) > 1e-3
    # The same computation (ComfyUI skips a ControlNet of strength 0); float32 rounding at most.
    assert relative(zero, none) <= 64 * FLOAT32_EPS


def test_tuned_weights_saved_and_loaded_give_the_same_samples(server, runs, sample_video):
    entry, prompt = runs(SMOOTH)
    tuned = saved(server, entry, SAMPLE)
    loaded = renamed(SMOOTH, sample_video[0])
    loaded[TUNE] = {"class_type": "SmoothVideo_LoadTunedVideoWeights",
                    "inputs": {"model": ["9", 0], "weights": prompt[TUNE]["inputs"]["save_name"] + ".safetensors"}}
    del loaded["19"]  # the loss curve: only One-shot Tune draws one
    again = saved(server, server.run(loaded), SAMPLE)
    assert relative(again, tuned) <= 64 * FLOAT32_EPS


def test_tuned_weights_load_only_onto_controlvideo_with_their_key_frame(server, runs, sample_video):
    _, prompt = runs(SMOOTH)
    file = prompt[TUNE]["inputs"]["save_name"] + ".safetensors"
    graph = renamed(SMOOTH, sample_video[0])
    graph[TUNE] = {"class_type": "SmoothVideo_LoadTunedVideoWeights", "inputs": {"model": ["9", 0], "weights": file}}
    del graph["19"]
    graph["9"]["inputs"]["key_frame"] = 1
    with pytest.raises(ComfyError, match="was tuned with key_frame 0, but this MODEL's Inflate UNet \\(ControlVideo\\) uses key_frame 1"):
        server.run(graph)
    graph["9"] = {"class_type": "SmoothVideo_InflateUNet", "inputs": {"model": ["4", 0], "attention": "sparse_causal"}}
    with pytest.raises(ComfyError, match="was tuned on a controlvideo video model, but this MODEL is a tune_a_video one"):
        server.run(graph)


@pytest.mark.parametrize("where", ["tuning", "inversion", "sampling"])
def test_a_control_batch_of_other_frames_is_refused_with_both_counts(server, sample_video, where):
    frames = {"class_type": "SmoothVideo_SelectVideoFrames",
              "inputs": {"video": ["1", 0], "start": 0, "count": 3, "stride": 1, "width": 80, "height": 80}}
    prompt = renamed(SMOOTH, sample_video[0])
    prompt["c3"] = frames
    prompt["c4"] = {"class_type": "Canny", "inputs": {"image": ["c3", 0], "low_threshold": 0.4, "high_threshold": 0.4}}
    prompt["c5"] = {**prompt[APPLY_SOURCE], "inputs": {**prompt[APPLY_SOURCE]["inputs"], "image": ["c4", 0]}}
    if where == "tuning":
        prompt[TUNE]["inputs"]["positive"] = ["c5", 0]
    elif where == "inversion":
        prompt[INVERT]["inputs"]["conditioning"] = ["c5", 0]
    else:
        prompt[APPLY_EDIT]["inputs"]["image"] = ["c4", 0]
    with pytest.raises(ComfyError, match="has 3 control images but the video has 4 frames"):
        server.run(prompt)


def test_control_images_of_another_size_are_refused_with_both_sizes(server, sample_video):
    prompt = renamed(SMOOTH, sample_video[0])
    prompt["c1"] = {"class_type": "ImageScale", "inputs": {"image": ["21", 0], "upscale_method": "nearest-exact",
                                                             "width": 96, "height": 80, "crop": "disabled"}}
    prompt[APPLY_SOURCE]["inputs"]["image"] = ["c1", 0]
    with pytest.raises(ComfyError, match="control images of 96x80 px but the video's frames are 80x80 px"):
        server.run(prompt)


def test_a_key_frame_past_the_video_is_refused(server, sample_video):
    prompt = renamed(SMOOTH, sample_video[0], **{"9": {"key_frame": 4}})
    with pytest.raises(ComfyError, match="key_frame 4 is not a frame of this 4-frame video"):
        server.run(prompt)
