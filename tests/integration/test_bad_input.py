"""Bad input over HTTP: each prompt fails with a message that names the fix, the server keeps
answering, and a good prompt runs after all of them (the last test of this file).

Graphs are cut down to the nodes up to the one that must refuse, with the TINY settings.
"""

import uuid

import pytest

from comfy_host import HOSTS, ComfyError, load_workflow, node_output
from graphs import invert_graph, sampler_graph, tune_graph
from quick_settings import TINY, quick

pytestmark = pytest.mark.integration
IP2P = "smoothvideo_tiny_ip2p.safetensors"


def assert_server_alive(server):
    assert server.version in HOSTS


def history_error(server, prompt, match):
    """Runs `prompt`, expects it to fail with `match`, and checks /history carries that message."""
    prompt_id = server.queue(prompt)
    with pytest.raises(ComfyError, match=match):
        server.wait(prompt_id, timeout=300)
    entry = server.get(f"/history/{prompt_id}")[prompt_id]
    assert entry["status"]["status_str"] == "error"
    messages = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert messages, entry["status"]
    assert_server_alive(server)
    return messages[0]


# ---------------------------------------------------------------- 1. empty or unreadable video
# ComfyUI's LoadVideo opens the file lazily; Select Video Frames, which the workflows give Load
# Video's VIDEO, is the first node to read it and says what to do.
@pytest.mark.parametrize("content", [b"", b"this is not a video\n"], ids=["zero_bytes", "text_file"])
def test_an_empty_or_unreadable_video_fails_at_select_video_frames_with_what_to_do(server, content):
    name = f"bad_{uuid.uuid4().hex[:6]}.mp4"
    (server.base / "input" / name).write_bytes(content)
    prompt = load_workflow("vl_score")
    prompt["1"]["inputs"]["file"] = name
    error = history_error(server, prompt, f"the video stream of {name} cannot be decoded .*Re-encode the clip")
    assert error["node_type"] == "SmoothVideo_SelectVideoFrames"


# ---------------------------------------------------------------- 2. One-shot Tune
def test_tuning_two_frames_with_cross_frame_names_the_native_variant(server, sample_video):
    prompt = tune_graph(sample_video[0])
    prompt["3"]["inputs"]["count"] = 2
    error = history_error(server, prompt, "cross_frame smooth loss needs at least 3 frames.*native")
    assert error["node_type"] == "SmoothVideo_OneShotTune"


def test_tuning_an_instructpix2pix_model_says_to_tune_sd15(server, sample_video):
    prompt = tune_graph(sample_video[0])
    prompt["4"]["inputs"]["ckpt_name"] = IP2P
    history_error(server, prompt, "takes 8 input channels.*tune an SD1.5 checkpoint")


def test_tuning_with_combined_conditionings_asks_for_one_prompt(server, sample_video):
    prompt = tune_graph(sample_video[0])
    prompt["20"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["7", 0]}}
    prompt["10"]["inputs"]["positive"] = ["20", 0]
    history_error(server, prompt, "positive holds 2 conditionings.*connect a single CLIP Text Encode")


@pytest.mark.parametrize("name", ["lambda2", "lambda1"])
def test_nan_lambdas_are_refused_by_tuning(server, sample_video, name):
    # JSON clients can send NaN; ComfyUI's min/max checks let NaN through, the node refuses it.
    history_error(server, tune_graph(sample_video[0], **{name: float("nan")}), f"{name}.*must be a finite number")


def test_infinite_lambdas_are_refused_when_queued(server, sample_video):
    with pytest.raises(ComfyError, match=r"400.*Value inf bigger than max of 1000000.0: lambda1"):
        server.queue(tune_graph(sample_video[0], lambda1=float("inf")))
    assert_server_alive(server)


@pytest.mark.parametrize("name, value", [("lambda3", float("nan")), ("lambda1", float("nan"))])
def test_non_finite_lambdas_are_refused_by_the_smooth_noise_sampler(server, name, value):
    prompt = sampler_graph(**{name: value})
    history_error(server, prompt, f"{name}.*finite")


def test_zero_tuning_steps_are_refused_by_comfyui_validation(server, sample_video):
    # ComfyUI checks the input's min (1) when the prompt is queued: POST /prompt answers 400.
    with pytest.raises(ComfyError, match=r"400.*Value 0 smaller than min of 1"):
        server.queue(tune_graph(sample_video[0], steps=0))
    assert_server_alive(server)


# ---------------------------------------------------------------- 3. DDIM Invert Video
def test_inverting_a_single_frame_works(server, sample_video):
    prompt = invert_graph(sample_video[0])
    prompt["3"]["inputs"]["count"] = 1
    entry = server.run(prompt)
    assert node_output(entry, "12")["latents"]


def test_inverting_with_combined_conditionings_asks_for_one_prompt(server, sample_video):
    prompt = invert_graph(sample_video[0])
    prompt["20"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["8", 0]}}
    prompt["11"]["inputs"]["conditioning"] = ["20", 0]
    history_error(server, prompt, "conditioning holds 2 conditionings.*connect a single CLIP Text Encode")


# ---------------------------------------------------------------- 4. Smooth Noise Sampler
# (one frame with lambda3 > 0: tests/integration/test_smooth_sampler.py)
def test_start_percent_after_end_percent_is_refused(server):
    prompt = sampler_graph(start_percent=0.8, end_percent=0.2)
    history_error(server, prompt, r"start_percent \(0.8\) is after end_percent \(0.2\)")


@pytest.mark.parametrize("workflow", ["ip2p_video_zero_smooth", "ip2p_video_zero_smooth_patch"])
def test_ip2p_source_frames_and_latent_frames_that_differ_are_refused(server, sample_video, workflow):
    # ComfyUI itself would stretch the 4 source frames over the 6 latents without a word; the Smooth
    # Noise Sampler and the Smooth Noise (Eq. 5) patch refuse it alike.
    prompt = quick(load_workflow(workflow), TINY)
    prompt["1"]["inputs"]["file"] = sample_video[0]
    prompt["20"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 80, "height": 80, "batch_size": 6}}
    prompt["13"]["inputs"]["latent_image"] = ["20", 0]
    error = history_error(server, prompt, "carries 4 source frames .* but the LATENT has 6: sample the LATENT output")
    assert error["node_type"] == "SamplerCustomAdvanced"


# ---------------------------------------------------------------- 5. Load Tuned Video Weights
def test_weights_tuned_from_another_base_model_are_refused(server, sample_video):
    prompt = tune_graph(sample_video[0])
    save_name = prompt["10"]["inputs"]["save_name"]
    server.run(prompt)
    other = invert_graph(sample_video[0])
    other["4"]["inputs"]["ckpt_name"] = IP2P
    other["10"] = {"class_type": "SmoothVideo_LoadTunedVideoWeights",
                   "inputs": {"model": ["9", 0], "weights": f"{save_name}.safetensors"}}
    other["11"]["inputs"]["model"] = ["10", 0]
    error = history_error(server, other, "tuned from another base model.*load the checkpoint it was tuned from")
    assert error["node_type"] == "SmoothVideo_LoadTunedVideoWeights"


def test_inverting_frames_of_another_size_than_the_tuned_weights_is_refused(server, sample_video):
    prompt = tune_graph(sample_video[0])  # 80 px frames
    save_name = prompt["10"]["inputs"]["save_name"]
    server.run(prompt)
    other = invert_graph(sample_video[0])
    other["3"]["inputs"].update(width=64, height=64)
    other["10"] = {"class_type": "SmoothVideo_LoadTunedVideoWeights",
                   "inputs": {"model": ["9", 0], "weights": f"{save_name}.safetensors"}}
    other["11"]["inputs"]["model"] = ["10", 0]
    error = history_error(server, other, r"tuned on 80x80 px frames \(latents 10x10\) but the LATENT's frames are 64x64 px")
    assert error["node_type"] == "SmoothVideo_DDIMInvertVideo"
    other["3"]["inputs"].update(width=80, height=80)  # the size it was tuned on
    assert node_output(server.run(other), "12")["latents"]


# ---------------------------------------------------------------- 6. models that are not epsilon SD1.x
# Stock ModelSampling nodes change what a MODEL predicts; the pack reads the effective sampling.
MODEL_SAMPLING = {
    "v_prediction": {"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "v_prediction", "zsnr": False}},
    "lcm": {"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "lcm", "zsnr": False}},
    "flow": {"class_type": "ModelSamplingSD3", "inputs": {"shift": 3.0}},
}
SAMPLES_AS = {"v_prediction": "V_PREDICTION", "lcm": "LCM", "flow": "CONST"}


@pytest.mark.parametrize("kind", MODEL_SAMPLING)
def test_inflating_a_model_that_is_not_epsilon_prediction_is_refused(server, sample_video, kind):
    prompt = invert_graph(sample_video[0])
    prompt["20"] = {**MODEL_SAMPLING[kind], "inputs": {**MODEL_SAMPLING[kind]["inputs"], "model": ["4", 0]}}
    prompt["9"]["inputs"]["model"] = ["20", 0]
    error = history_error(server, prompt, f"samples as {SAMPLES_AS[kind]}.*need epsilon prediction.*remove the ModelSampling node")
    assert error["node_type"] == "SmoothVideo_InflateUNet"


def test_v_prediction_set_after_inflating_is_refused_by_tuning_and_inversion(server, sample_video):
    sampling = {**MODEL_SAMPLING["v_prediction"], "inputs": {**MODEL_SAMPLING["v_prediction"]["inputs"], "model": ["9", 0]}}
    tune = tune_graph(sample_video[0])
    tune["20"] = sampling
    tune["10"]["inputs"]["model"] = ["20", 0]
    assert history_error(server, tune, "samples as V_PREDICTION")["node_type"] == "SmoothVideo_OneShotTune"
    invert = invert_graph(sample_video[0])
    invert["20"] = sampling
    invert["11"]["inputs"]["model"] = ["20", 0]
    assert history_error(server, invert, "samples as V_PREDICTION")["node_type"] == "SmoothVideo_DDIMInvertVideo"


def test_an_sd2_unet_is_refused_by_inflate_unet(server, sample_video):
    # A tiny SD2-layout UNet (1024-wide context) that ComfyUI's Load Diffusion Model detects as SD2.
    prompt = invert_graph(sample_video[0])
    prompt["20"] = {"class_type": "UNETLoader",
                    "inputs": {"unet_name": "smoothvideo_tiny_sd2_unet.safetensors", "weight_dtype": "default"}}
    prompt["9"]["inputs"]["model"] = ["20", 0]
    error = history_error(server, prompt, "SD20 is not an SD1.x UNet.*use an SD1.5 or InstructPix2Pix checkpoint")
    assert error["node_type"] == "SmoothVideo_InflateUNet"


def test_the_smooth_noise_sampler_refuses_a_flow_model(server):
    prompt = sampler_graph()
    prompt["8"] = {**MODEL_SAMPLING["flow"], "inputs": {**MODEL_SAMPLING["flow"]["inputs"], "model": ["1", 0]}}
    prompt["4"]["inputs"].update(model=["8", 0], scheduler="simple")
    prompt["6"]["inputs"]["model"] = ["8", 0]
    error = history_error(server, prompt, r"samples as a flow model \(.*\): remove the ModelSampling node")
    assert error["node_type"] == "SamplerCustom"


# ---------------------------------------------------------------- after all of them
def test_a_good_prompt_runs_after_the_bad_ones(server, sample_video):
    prompt = quick(load_workflow("vl_score"), TINY)
    prompt["1"]["inputs"]["file"] = sample_video[0]
    score = node_output(server.run(prompt), "5")["vl_score"][0]
    assert -1.0 <= score <= 1.0


def test_zero_terminal_snr_schedule_is_refused_by_tuning_and_inversion(server, sample_video):
    """ModelSamplingDiscrete(eps, zsnr) keeps epsilon prediction but rescales the schedule;
    tuning and inversion follow SD1.5's, so the mix is refused, not run."""
    sampling = {"class_type": "ModelSamplingDiscrete", "inputs": {"sampling": "eps", "zsnr": True, "model": ["9", 0]}}
    tune = tune_graph(sample_video[0])
    tune["20"] = sampling
    tune["10"]["inputs"]["model"] = ["20", 0]
    message = "noise schedule is not SD1.5's.*set zsnr off"
    assert history_error(server, tune, "One-shot Tune: this MODEL's " + message)["node_type"] == "SmoothVideo_OneShotTune"
    invert = invert_graph(sample_video[0])
    invert["20"] = sampling
    invert["11"]["inputs"]["model"] = ["20", 0]
    error = history_error(server, invert, "DDIM Invert Video: this MODEL's " + message)
    assert error["node_type"] == "SmoothVideo_DDIMInvertVideo"


@pytest.mark.parametrize("change, message", [
    ({"steps": 7}, r"inverts along 4 DDIM steps \(timesteps 751 to 1\), but the sampler's SIGMAS hold 7 steps from "
                   r"sigma \d+\.\d+: .*set DDIM Invert Video's steps to 7"),
    ({"steps": 2}, r"SIGMAS hold 2 steps .*set DDIM Invert Video's steps to 2"),
    ({"scheduler": "karras"}, r"SIGMAS \(4 steps from sigma \d+\.\d+\) are not the ddim_uniform schedule of 4 steps"),
    ({"denoise": 0.5}, r"SIGMAS \(4 steps from sigma \d+\.\d+\) are not the ddim_uniform schedule of 4 steps"),
], ids=["7_steps", "2_steps", "karras", "denoise"])
def test_an_inversion_that_does_not_match_the_samplers_schedule_is_refused(server, sample_video, change, message):
    """The Tune-A-Video workflows give DDIM Invert Video the sampler's SIGMAS: inverted noise is the
    starting point of one schedule only (before, 4 inversion steps into a 7-step sampler ran)."""
    prompt = quick(load_workflow("tune_a_video_smooth"), TINY)
    prompt["1"]["inputs"]["file"] = sample_video[0]
    prompt["10"]["inputs"].update(steps=1, save_name=f"test_{uuid.uuid4().hex[:6]}")
    prompt["13"]["inputs"].update(change)
    assert history_error(server, prompt, message)["node_type"] == "SmoothVideo_DDIMInvertVideo"
