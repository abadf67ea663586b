"""Smooth Noise (Eq. 5) as a patch on the MODEL, in a real ComfyUI server: with the stock ddim
sampler it is the Smooth Noise Sampler (plain CFG and InstructPix2Pix's DualCFGGuider), it runs
under every other sampler, it composes with the video models and with other sampling patches
in either order, and it refuses what it cannot do with a message."""

import uuid

import pytest
from safetensors.torch import load_file

from comfy_host import ComfyError, node_output
from graphs import dual_cfg_guider, invert_graph, ip2p_frames_graph, sampler_graph, tune_graph

pytestmark = pytest.mark.integration
SD15 = "smoothvideo_tiny_sd15.safetensors"
STEPS = 3
FLOAT32_EPS = 1.19e-7
# The same float32 computation twice: measured bitwise equal here (largest difference 0), allowed the
# 8 roundings of the scale that multi-threaded kernels may add in another order (as test_smooth_sampler).
SAME = 8
# k-diffusion samplers of both hosts beyond ddim (= euler); the SDE ones draw their noise from the seed.
OTHER_SAMPLERS = ["euler_ancestral", "heun", "dpm_2", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m",
                  "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm", "uni_pc", "ipndm", "deis"]


def smooth_noise(model, lambda3=0.5, start=0.0, end=1.0):
    return {"class_type": "SmoothVideo_SmoothNoise", "inputs": {
        "model": model, "lambda1": 1000.0, "lambda3": lambda3, "start_percent": start, "end_percent": end}}


def smooth_sampler(lambda3=0.5):
    return {"class_type": "SmoothVideo_SmoothNoiseSampler",
            "inputs": {"lambda1": 1000.0, "lambda3": lambda3, "start_percent": 0.0, "end_percent": 1.0}}


def stock_sampler(name="ddim"):
    return {"class_type": "KSamplerSelect", "inputs": {"sampler_name": name}}


def save(samples):
    return {"class_type": "SaveLatent", "inputs": {"samples": samples, "filename_prefix": f"test/{uuid.uuid4().hex[:8]}"}}


def saved(server, entry, node_id):
    item = node_output(entry, node_id)["latents"][0]
    return load_file(str(server.base / "output" / item["subfolder"] / item["filename"]))["latent_tensor"]


def text_to_image(arms: dict, frames=4, scheduler="ddim_uniform", extra=None):
    """The tiny SD1.5 model on `frames` empty latents (seeded noise, different per frame) with CFG 3,
    one SamplerCustom per arm: arms maps a name to (model node, sampler node); `extra` adds nodes
    (patches on "1"). Each arm's result is saved as "s<name>"."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD15}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": frames}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red ball", "clip": ["1", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "5": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": scheduler, "steps": STEPS, "denoise": 1.0}},
        **(extra or {}),
    }
    for name, (model, sampler) in arms.items():
        prompt["m" + name] = sampler
        prompt["k" + name] = {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": True, "noise_seed": 7, "cfg": 3.0, "positive": ["3", 0], "negative": ["4", 0],
            "sampler": ["m" + name, 0], "sigmas": ["5", 0], "latent_image": ["2", 0]}}
        prompt["s" + name] = save(["k" + name, 0])
    return prompt


def run_arms(server, arms, **kwargs):
    entry = server.run(text_to_image(arms, **kwargs))
    return {name: saved(server, entry, "s" + name) for name in arms}


def close(a, b, eps=SAME):
    """Equal up to `eps` float32 roundings of the latents' scale (the random-weight model's reach ~70)."""
    return (a - b).abs().max().item() <= eps * FLOAT32_EPS * b.abs().max().item()


def test_node_is_listed(server):
    info = server.get("/object_info")["SmoothVideo_SmoothNoise"]
    assert info["display_name"] == "Smooth Noise (Eq. 5)"
    assert info["output"] == ["MODEL"]
    assert info["input"]["required"]["lambda3"][1]["default"] == 0.5


def test_with_ddim_it_is_the_smooth_noise_sampler(server):
    out = run_arms(server, {
        "sampler": (["1", 0], smooth_sampler()),
        "patch": (["p", 0], stock_sampler("ddim")),
        "stock": (["1", 0], stock_sampler("ddim")),
    }, extra={"p": smooth_noise(["1", 0])})
    assert out["patch"].shape == (4, 4, 8, 8)
    # The same operations in the same order (Euler steps, `ksampling.correct_denoised`): measured 0.
    assert close(out["patch"], out["sampler"])
    assert not close(out["patch"], out["stock"], eps=1e4)  # and Eq. 5 acts


def test_under_dual_cfg_it_is_the_smooth_noise_sampler(server, sample_video):
    """InstructPix2Pix's DualCFGGuider adds its text term after the post-CFG functions; the patch
    corrects the whole guided prediction, as the sampler does."""
    prompt = ip2p_frames_graph(sample_video[0], STEPS)
    prompt["p"] = smooth_noise(["1", 0])
    arms = {"sampler": (["1", 0], smooth_sampler()), "patch": (["p", 0], stock_sampler("ddim")),
            "stock": (["1", 0], stock_sampler("ddim"))}
    for name, (model, sampler) in arms.items():
        prompt["g" + name] = dual_cfg_guider(model)
        prompt["m" + name] = sampler
        prompt["k" + name] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["10", 0], "guider": ["g" + name, 0], "sampler": ["m" + name, 0], "sigmas": ["9", 0], "latent_image": ["7", 2]}}
        prompt["s" + name] = save(["k" + name, 0])
    entry = server.run(prompt)
    out = {name: saved(server, entry, "s" + name) for name in arms}
    assert close(out["patch"], out["sampler"])
    assert not close(out["patch"], out["stock"], eps=1e4)


def test_off_is_the_unpatched_model(server):
    out = run_arms(server, {
        "zero": (["z", 0], stock_sampler("dpmpp_2m")),
        "empty_range": (["e", 0], stock_sampler("dpmpp_2m")),
        "stock": (["1", 0], stock_sampler("dpmpp_2m")),
    }, extra={"z": smooth_noise(["1", 0], lambda3=0.0), "e": smooth_noise(["1", 0], start=0.0, end=0.0)})
    assert close(out["zero"], out["stock"])  # the patch returns the prediction untouched: measured 0
    assert close(out["empty_range"], out["stock"])


def test_the_range_limits_the_correction_to_its_steps(server):
    """Active on the first step only (of 3) is a different result from every step and from none."""
    out = run_arms(server, {
        "first": (["f", 0], stock_sampler("ddim")),
        "all": (["a", 0], stock_sampler("ddim")),
        "stock": (["1", 0], stock_sampler("ddim")),
    }, extra={"f": smooth_noise(["1", 0], start=0.0, end=0.3), "a": smooth_noise(["1", 0])})
    assert not close(out["first"], out["stock"], eps=1e4)
    assert not close(out["first"], out["all"], eps=1e4)


def test_every_other_sampler_runs_with_it(server):
    arms = {}
    for name in OTHER_SAMPLERS:
        arms[name] = (["p", 0], stock_sampler(name))
        arms[name + "_stock"] = (["1", 0], stock_sampler(name))
    out = run_arms(server, arms, scheduler="normal", extra={"p": smooth_noise(["1", 0])})
    for name in OTHER_SAMPLERS:
        assert out[name].shape == (4, 4, 8, 8) and out[name].isfinite().all(), name
        assert not close(out[name], out[name + "_stock"], eps=1e3), f"{name}: Eq. 5 changed nothing"


@pytest.mark.parametrize("video_node", [
    {"class_type": "SmoothVideo_CrossFrameAttention", "inputs": {"chunk_size": 8}},
    {"class_type": "SmoothVideo_InflateUNet", "inputs": {"attention": "sparse_causal", "group_norm": "video"}},
], ids=["cross_frame", "inflate"])
def test_it_stacks_with_the_video_models_in_either_order(server, video_node):
    extra = {
        "v": {**video_node, "inputs": {**video_node["inputs"], "model": ["1", 0]}},
        "vp": smooth_noise(["v", 0]),
        "p": smooth_noise(["1", 0]),
        "pv": {**video_node, "inputs": {**video_node["inputs"], "model": ["p", 0]}},
    }
    out = run_arms(server, {name: ([name, 0], stock_sampler("ddim")) for name in ("v", "vp", "pv")}, extra=extra)
    assert close(out["vp"], out["pv"])
    assert not close(out["vp"], out["v"], eps=1e4)


@pytest.mark.parametrize("guidance", [
    {"class_type": "PerturbedAttentionGuidance", "inputs": {"scale": 3.0}},
    {"class_type": "RescaleCFG", "inputs": {"multiplier": 0.7}},
], ids=["PAG", "RescaleCFG"])
def test_it_stacks_with_sampling_guidance_in_either_order(server, guidance):
    """Eq. 5 corrects the final guided prediction: after a post-CFG (PAG) or CFG (RescaleCFG)
    function whichever node comes first; each still acts."""
    extra = {
        "g": {**guidance, "inputs": {**guidance["inputs"], "model": ["1", 0]}},
        "gp": smooth_noise(["g", 0]),
        "p": smooth_noise(["1", 0]),
        "pg": {**guidance, "inputs": {**guidance["inputs"], "model": ["p", 0]}},
    }
    out = run_arms(server, {name: ([name, 0], stock_sampler("ddim")) for name in ("g", "gp", "pg", "p")}, extra=extra)
    assert close(out["gp"], out["pg"])
    assert not close(out["gp"], out["g"], eps=1e4)  # Eq. 5 acts
    assert not close(out["gp"], out["p"], eps=1e4)  # and so does the guidance


def test_one_frame_is_the_samplers_clear_error(server):
    with pytest.raises(ComfyError, match=r"Smooth Noise \(Eq. 5\) needs at least 2 frames"):
        run_arms(server, {"patch": (["p", 0], stock_sampler("dpmpp_2m"))}, frames=1, extra={"p": smooth_noise(["1", 0])})
    one = run_arms(server, {"off": (["p", 0], stock_sampler("dpmpp_2m"))}, frames=1,
                   extra={"p": smooth_noise(["1", 0], lambda3=0.0)})
    assert one["off"].shape == (1, 4, 8, 8)


def test_twice_and_with_the_smooth_noise_sampler_are_refused(server):
    with pytest.raises(ComfyError, match="carries Smooth Noise \\(Eq. 5\\) already: one is enough"):
        run_arms(server, {"x": (["pp", 0], stock_sampler("ddim"))},
                 extra={"p": smooth_noise(["1", 0]), "pp": smooth_noise(["p", 0])})
    with pytest.raises(ComfyError, match="Smooth Noise Sampler would apply Eq. 5 a second time"):
        run_arms(server, {"x": (["p", 0], smooth_sampler())}, extra={"p": smooth_noise(["1", 0])})


def test_tuning_and_inversion_refuse_it(server, sample_video):
    tune = tune_graph(sample_video[0])
    tune["p"] = smooth_noise(["9", 0])
    tune["10"]["inputs"]["model"] = ["p", 0]
    with pytest.raises(ComfyError, match="One-shot Tune: this MODEL carries Smooth Noise"):
        server.run(tune)
    invert = invert_graph(sample_video[0])
    invert["p"] = smooth_noise(["9", 0])
    invert["11"]["inputs"]["model"] = ["p", 0]
    with pytest.raises(ComfyError, match="DDIM Invert Video: this MODEL carries Smooth Noise"):
        server.run(invert)


def test_a_flow_model_is_refused_before_sampling(server):
    prompt = sampler_graph()
    prompt["f"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 3.0}}
    prompt["p"] = smooth_noise(["f", 0])
    prompt["6"]["inputs"]["model"] = ["p", 0]
    prompt["5"] = stock_sampler("euler")
    with pytest.raises(ComfyError, match=r"Smooth Noise \(Eq. 5\) works on noise-prediction diffusion models"):
        server.run(prompt)
