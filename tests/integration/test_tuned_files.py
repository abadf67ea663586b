"""The files One-shot Tune writes in models/smoothvideo/, as a user meets them over HTTP: names
that cannot be written or that reach another name's files, a write that fails at the end of a
tune, damaged or cut-short files, what a killed save leaves behind, file permissions, and tuned
weights loaded onto a model that differs from the one they were tuned on."""

import math
import os
import re
import uuid

import pytest

from comfy_host import HOSTS, ComfyError, node_output
from graphs import invert_graph, sampler_graph, tune_graph
from make_sample_video import render_frames, write_video

pytestmark = pytest.mark.integration
WEIGHTS, CHECKPOINT = ".safetensors", ".checkpoint.safetensors"


def smoothvideo(server):
    folder = server.base / "models" / "smoothvideo"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_error(server, prompt) -> str:
    """Runs `prompt`, which must fail; ComfyUI's message (node type and text). The server goes on."""
    with pytest.raises(ComfyError) as failure:
        server.run(prompt, timeout=300)
    assert server.version in HOSTS
    return str(failure.value)


def load_weights_graph(video: str, weights: str, attention: str = "sparse_causal", group_norm: str = "video") -> dict:
    """Inflate UNet -> Load Tuned Video Weights -> DDIM Invert Video -> SaveLatent."""
    prompt = invert_graph(video)
    prompt["9"]["inputs"].update(attention=attention, group_norm=group_norm)
    prompt["13"] = {"class_type": "SmoothVideo_LoadTunedVideoWeights", "inputs": {"model": ["9", 0], "weights": weights}}
    prompt["11"]["inputs"]["model"] = ["13", 0]
    return prompt


def weights_options(server) -> list[str]:
    spec = server.get("/object_info/SmoothVideo_LoadTunedVideoWeights")["SmoothVideo_LoadTunedVideoWeights"]
    options = spec["input"]["required"]["weights"]
    return options[0] if isinstance(options[0], list) else options[1]["options"]


def test_a_save_name_too_long_for_its_files_is_refused_before_tuning(server, sample_video):
    name = "a" * 240  # passes the plain-name check; <name>.checkpoint.safetensors.<random>.tmp does not fit
    prompt = tune_graph(sample_video[0], save_name=name, steps=3, checkpoint_every=1)
    message = run_error(server, prompt)
    fits = int(re.search(r"at most (\d+) fit", message).group(1))
    assert "choose a shorter save_name" in message and "SmoothVideo_OneShotTune" in message
    assert not any(f.name.startswith("aaaa") for f in smoothvideo(server).iterdir())
    # The longest name that fits is written, checkpoints and all.
    prompt = tune_graph(sample_video[0], save_name="b" * fits, steps=1, checkpoint_every=1)
    server.run(prompt)
    assert (smoothvideo(server) / ("b" * fits + CHECKPOINT)).exists()
    assert (smoothvideo(server) / ("b" * fits + WEIGHTS)).exists()


def test_a_save_name_ending_in_checkpoint_cannot_reach_another_names_checkpoint(server, sample_video):
    owner = f"test_{uuid.uuid4().hex[:6]}"
    message = run_error(server, tune_graph(sample_video[0], save_name=f"{owner}.checkpoint"))
    assert "ends in .checkpoint" in message and f"save_name '{owner}'" in message
    assert not (smoothvideo(server) / (owner + CHECKPOINT)).exists()


def test_a_finished_tune_whose_file_cannot_be_written_is_saved_under_another_name(server, sample_video):
    name = f"test_{uuid.uuid4().hex[:6]}"
    (smoothvideo(server) / (name + WEIGHTS)).mkdir()  # the weights' file name is taken by a folder
    message = run_error(server, tune_graph(sample_video[0], save_name=name, steps=2))
    saved = re.search(r"saved as models/smoothvideo/(\S+\.safetensors) instead: choose that file in Load Tuned Video Weights",
                      message)
    assert saved, message
    assert f"could not be written to models/smoothvideo/{name}{WEIGHTS}" in message
    # The tune is not lost: its weights load and run.
    entry = server.run(load_weights_graph(sample_video[0], saved.group(1)))
    assert node_output(entry, "12")["latents"]


def test_a_damaged_checkpoint_is_set_aside_and_the_tune_starts_anew(server, sample_video):
    name = f"test_{uuid.uuid4().hex[:6]}"
    server.run(tune_graph(sample_video[0], save_name=name, steps=1, checkpoint_every=1))
    checkpoint = smoothvideo(server) / (name + CHECKPOINT)
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])  # cut short, as a full disk leaves it
    # (Each run differs from the one before in some input: ComfyUI would answer an identical prompt from its cache.)
    entry = server.run(tune_graph(sample_video[0], save_name=name, steps=2, checkpoint_every=2))
    text = node_output(entry, "10")["text"][0]
    assert f"the checkpoint models/smoothvideo/{name}{CHECKPOINT} could not be read" in text, text
    assert f"set aside as {name}{CHECKPOINT}.damaged and the tune started anew" in text
    assert (smoothvideo(server) / f"{name}{CHECKPOINT}.damaged").exists()
    # The name is not blocked: the new checkpoint is a good one, and the next run resumes from it.
    entry = server.run(tune_graph(sample_video[0], save_name=name, steps=2, checkpoint_every=1))
    assert "resumed from the checkpoint at step 2" in node_output(entry, "10")["text"][0]
    assert f"{name}{CHECKPOINT}.damaged" not in weights_options(server)


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{}", os.urandom(4096), b"\xff" * 64],
                         ids=["empty", "truncated_header", "random", "header_too_large"])
def test_unreadable_tuned_weights_are_named_with_what_to_do(server, sample_video, content):
    name = f"test_bad_{uuid.uuid4().hex[:6]}{WEIGHTS}"
    (smoothvideo(server) / name).write_bytes(content)
    message = run_error(server, load_weights_graph(sample_video[0], name))
    assert f"{name} cannot be read as tuned weights (" in message
    assert "re-run One-shot Tune to write it again, or choose another file" in message
    assert "Traceback" not in message and "/" + name not in message


def test_a_checkpoint_chosen_as_tuned_weights_names_the_weights_file(server, sample_video):
    name = f"test_{uuid.uuid4().hex[:6]}"
    server.run(tune_graph(sample_video[0], save_name=name, steps=1, checkpoint_every=1))
    message = run_error(server, load_weights_graph(sample_video[0], name + CHECKPOINT))
    if "prompt_outputs_failed_validation" in message:
        # ComfyUI 0.17.2 checks a combo's value against its options when the prompt is queued.
        assert "Value not in list" in message and name + CHECKPOINT in message
    else:  # 0.3.75 lets the value through to the node
        assert f"is a tuning checkpoint (One-shot Tune resumes from it), not tuned weights: choose {name}{WEIGHTS}" in message
    assert "load_checkpoint" not in message and "load_tuned_weights" not in message


def test_what_a_killed_save_left_behind_is_not_listed_and_is_cleaned_up(server, sample_video):
    name = f"test_{uuid.uuid4().hex[:6]}"
    stale = [smoothvideo(server) / f"{name}{CHECKPOINT}.0123abcd.tmp", smoothvideo(server) / f"{name}{WEIGHTS}.89abcdef.tmp"]
    for path in stale:
        path.write_bytes(b"")  # what kill -9 during a save leaves
    assert not [option for option in weights_options(server) if option.endswith(".tmp")]
    server.run(tune_graph(sample_video[0], save_name=name, steps=1, checkpoint_every=1))
    assert not any(path.exists() for path in stale)
    assert not list(smoothvideo(server).glob(f"{name}*.tmp"))


def test_tuned_files_are_readable_like_comfyuis_own_outputs(server, sample_video):
    name = f"test_{uuid.uuid4().hex[:6]}"
    server.run(tune_graph(sample_video[0], save_name=name, steps=1, checkpoint_every=1))
    umask = os.umask(0)
    os.umask(umask)  # the server was started from this process and has its umask
    for suffix in (WEIGHTS, CHECKPOINT):
        mode = (smoothvideo(server) / (name + suffix)).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, f"{suffix}: {oct(mode)}"


def test_weights_tuned_with_sparse_causal_attention_are_refused_on_cross_frame(server, sample_video):
    name = f"test_{uuid.uuid4().hex[:6]}"
    server.run(tune_graph(sample_video[0], save_name=name, steps=1))
    message = run_error(server, load_weights_graph(sample_video[0], name + WEIGHTS, attention="cross_frame"))
    assert "was tuned with sparse_causal attention, but this MODEL's Inflate UNet uses cross_frame" in message
    assert "set Inflate UNet's attention to sparse_causal" in message
    entry = server.run(load_weights_graph(sample_video[0], name + WEIGHTS, attention="sparse_causal"))
    assert node_output(entry, "12")["latents"]


def test_weights_tuned_with_video_group_norm_are_refused_on_per_frame_group_norm(server, sample_video):
    name = f"test_{uuid.uuid4().hex[:6]}"
    server.run(tune_graph(sample_video[0], save_name=name, steps=1))  # Inflate UNet's default: video
    message = run_error(server, load_weights_graph(sample_video[0], name + WEIGHTS, group_norm="per_frame"))
    assert "was tuned with group_norm video, but this MODEL's Inflate UNet uses group_norm per_frame" in message
    assert "set Inflate UNet's group_norm to video" in message


def test_weights_from_before_the_published_group_norm_are_refused_with_what_to_do(server, sample_video):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    name = f"test_{uuid.uuid4().hex[:6]}"
    server.run(tune_graph(sample_video[0], save_name=name, steps=1))
    path = smoothvideo(server) / (name + WEIGHTS)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    del metadata["group_norm"]  # as files written before the pack recorded it
    save_file(load_file(str(path)), str(smoothvideo(server) / (name + "_old" + WEIGHTS)), metadata)
    message = run_error(server, load_weights_graph(sample_video[0], name + "_old" + WEIGHTS))
    assert "was written by an earlier version of SmoothVideo" in message and "tune it again" in message


def test_a_nan_correction_window_is_named_as_such(server):
    message = run_error(server, sampler_graph(start_percent=math.nan))
    assert "start_percent must be a number from 0 to 1 (a fraction of the steps), got nan" in message


def test_a_one_frame_video_is_counted_as_one_frame(server):
    name = f"one_frame_{uuid.uuid4().hex[:6]}.mp4"
    write_video(server.base / "input" / name, render_frames(frames=1, size=64, seed=3), fps=8)
    prompt = tune_graph(name)
    prompt = {node_id: prompt[node_id] for node_id in ("1", "3")}
    prompt["3"]["inputs"].update(start=1, count=1)
    prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    message = run_error(server, prompt)
    assert "start=1 is past the end of the video (1 frame); lower start" in message
