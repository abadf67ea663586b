"""The Tune-A-Video + smooth loss workflows, queued over HTTP on the real server.

They run with the TINY settings of scripts/quick_settings.py (4 frames of 80 px, 4 tuning
and 4 DDIM steps) through the same graphs that carry the paper's settings.
"""

import time
import uuid

import av
import pytest
from safetensors.torch import load_file

from comfy_host import ComfyError, node_output
from graphs import tiny_workflow

pytestmark = pytest.mark.integration


def video_frames(server, entry, node_id) -> int:
    item = node_output(entry, node_id)["images"][0]
    with av.open(str(server.base / item["type"] / item["subfolder"] / item["filename"])) as container:
        return sum(1 for _ in container.decode(video=0))


def tuned_weights(server, save_name):
    return load_file(str(server.base / "models" / "smoothvideo" / f"{save_name}.safetensors"))


def assert_same_weights(first, second):
    """Equal up to float summation order. Multi-threaded CPU kernels (and GPU atomics) add in
    another order from run to run (bitwise equal with one thread: tests/unit/test_tune.py),
    and AdamW's first steps, about lr * sign(gradient), can turn such a 1e-7 difference in a
    near-zero gradient into a 1e-6 one in a weight: so compare each tensor as a whole.
    (A different seed or setting gives relative differences of order 1.)"""
    assert first.keys() == second.keys()
    for key in first:
        difference = (first[key] - second[key]).norm() / first[key].norm().clamp_min(1e-12)
        assert difference < 1e-4, f"{key}: relative difference {difference:.2e}"


@pytest.fixture(scope="module")
def smooth_run(server, sample_video):
    """One run of tune_a_video_smooth (TINY settings): (history entry, its save_name)."""
    name = f"tune_a_video_smooth_{uuid.uuid4().hex[:6]}"
    return server.run(tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=name)), name


def check_tune_a_video_outputs(server, entry, save_name):
    assert video_frames(server, entry, "17") == 4
    vl = node_output(entry, "18")["vl_score"][0]
    assert -1.0 <= vl <= 1.0
    losses = node_output(entry, "10")["losses"]
    assert len(losses) == 4 and all(len(step) == 3 for step in losses)
    weights = tuned_weights(server, save_name)
    assert any(".attn_temp." in key for key in weights) and all("conv" not in key for key in weights)
    loss_curve = node_output(entry, "19")["images"][0]
    assert (server.base / "output" / loss_curve["subfolder"] / loss_curve["filename"]).exists()
    preview = node_output(entry, "10")["images"][0]  # the curve on the tuning node itself
    assert preview["type"] == "temp" and (server.base / "temp" / preview["subfolder"] / preview["filename"]).exists()


def test_tune_a_video_smooth_runs_over_http(server, smooth_run):
    check_tune_a_video_outputs(server, *smooth_run)


def test_tune_a_video_baseline_runs_over_http(server, sample_video, smooth_run):
    name = f"tune_a_video_baseline_{uuid.uuid4().hex[:6]}"
    entry = server.run(tiny_workflow("tune_a_video_baseline", sample_video[0], tune_a_video_baseline=name))
    check_tune_a_video_outputs(server, entry, name)
    # lambda2 = 0 trains on the MSE alone: the total is the MSE, and the weights differ from the smooth run's
    assert all(total == mse for total, mse, _ in node_output(entry, "10")["losses"])
    smooth_weights, baseline_weights = tuned_weights(server, smooth_run[1]), tuned_weights(server, name)
    differences = [(smooth_weights[k] - baseline_weights[k]).norm() / smooth_weights[k].norm() for k in smooth_weights]
    assert max(differences) > 1e-2


def test_the_comparison_runs_both_arms_side_by_side(server, sample_video):
    run = uuid.uuid4().hex[:6]
    entry = server.run(tiny_workflow(
        "tune_a_video_compare", sample_video[0],
        compare_smooth=f"cmp_smooth_{run}", compare_baseline=f"cmp_base_{run}",
    ))
    assert video_frames(server, entry, "52") == 4
    smooth, baseline = node_output(entry, "18")["vl_score"][0], node_output(entry, "38")["vl_score"][0]
    assert smooth != baseline
    smooth_losses = node_output(entry, "10")["losses"]
    base_losses = node_output(entry, "30")["losses"]
    # same seed: the first step sees the same noise and timestep, so the same MSE
    assert smooth_losses[0][1] == pytest.approx(base_losses[0][1], rel=1e-6)  # one float32 MSE of the same numbers: ~8 eps


def test_same_seed_same_tuned_weights_and_video(server, sample_video, smooth_run):
    entry, first_name = smooth_run
    name = f"determinism_{uuid.uuid4().hex[:6]}"
    again = server.run(tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=name))
    assert_same_weights(tuned_weights(server, first_name), tuned_weights(server, name))
    # Weights up to 1e-4 apart (above; ~4e-6 measured) move a score <= 1 by less (~2e-7 measured).
    assert node_output(again, "18")["vl_score"][0] == pytest.approx(node_output(entry, "18")["vl_score"][0], abs=1e-4)


def test_a_rerun_resumes_from_the_checkpoint_and_matches_an_uninterrupted_run(server, sample_video, smooth_run):
    name = f"resume_{uuid.uuid4().hex[:6]}"
    half = tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=name)
    half["10"]["inputs"].update(steps=2, checkpoint_every=2)
    server.run(half)
    entry = server.run(tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=name))
    assert "resumed from the checkpoint at step 2" in node_output(entry, "10")["text"][0]
    assert len(node_output(entry, "10")["losses"]) == 4
    assert_same_weights(tuned_weights(server, name), tuned_weights(server, smooth_run[1]))


def test_a_run_interrupted_after_a_checkpoint_resumes_to_the_weights_of_an_uninterrupted_run(server, sample_video):
    def prompt(save_name):
        tuning = tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=save_name)
        tuning["10"]["inputs"].update(steps=12, checkpoint_every=3)
        return tuning

    name = f"interrupted_{uuid.uuid4().hex[:6]}"
    events = server.progress_events(timeout=300)
    prompt_id = server.queue(prompt(name))
    for event in events:
        if event["prompt_id"] == prompt_id and event["node"] == "10" and event["value"] >= 4:
            break  # the checkpoint of step 3 is written
    events.close()
    server.interrupt()
    with pytest.raises(ComfyError, match="interrupted"):
        server.wait(prompt_id, timeout=60)
    resumed = server.run(prompt(name))
    summary = node_output(resumed, "10")["text"][0]
    assert any(f"resumed from the checkpoint at step {n}" in summary for n in (3, 6, 9)), summary
    assert len(node_output(resumed, "10")["losses"]) == 12
    uninterrupted = f"uninterrupted_{uuid.uuid4().hex[:6]}"
    server.run(prompt(uninterrupted))
    assert_same_weights(tuned_weights(server, name), tuned_weights(server, uninterrupted))


def test_interrupt_stops_tuning_and_the_server_runs_the_next_prompt(server, sample_video):
    long = tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=f"interrupt_{uuid.uuid4().hex[:6]}")
    long["10"]["inputs"].update(steps=500, checkpoint_every=0)
    events = server.progress_events(timeout=300)
    prompt_id = server.queue(long)
    for event in events:
        if event["node"] == "10" and event["value"] >= 1:
            break
    asked = time.time()
    server.interrupt()
    with pytest.raises(ComfyError, match="interrupted"):
        server.wait(prompt_id, timeout=60)
    assert time.time() - asked < 15
    events.close()
    entry = server.run(tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=f"after_{uuid.uuid4().hex[:6]}"))
    assert len(node_output(entry, "10")["losses"]) == 4


def test_tuning_a_plain_model_names_the_missing_node(server, sample_video):
    prompt = tiny_workflow("tune_a_video_smooth", sample_video[0])
    prompt["10"]["inputs"]["model"] = ["4", 0]
    with pytest.raises(ComfyError, match="put Inflate UNet between Load Checkpoint and this node"):
        server.run(prompt)


@pytest.mark.parametrize("save_name", ["../escape", "sub/dir", ""])
def test_save_name_may_not_leave_the_models_folder(server, sample_video, save_name):
    prompt = tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=save_name)
    with pytest.raises(ComfyError, match="must be a plain file name"):
        server.run(prompt)


def test_loading_the_tuned_weights_gives_the_tuned_model(server, sample_video, smooth_run):
    entry, name = smooth_run
    prompt = tiny_workflow("tune_a_video_smooth", sample_video[0])
    prompt["10"] = {"class_type": "SmoothVideo_LoadTunedVideoWeights", "inputs": {"model": ["9", 0], "weights": f"{name}.safetensors"}}
    del prompt["19"]  # the loss curve exists only where the tuning ran
    prompt["17"]["inputs"]["filename_prefix"] = f"smoothvideo/loaded_{uuid.uuid4().hex[:6]}"
    loaded = server.run(prompt)
    assert video_frames(server, loaded, "17") == 4
    # The same float32 weights in another run: summation order at most, ~84 eps of a score <= 1 (equal measured).
    assert node_output(loaded, "18")["vl_score"][0] == pytest.approx(node_output(entry, "18")["vl_score"][0], abs=1e-5)
