"""Small API graphs the integration tests share: the nodes up to the one under test, with the
TINY settings of scripts/quick_settings.py; and the run of a check script in a host's own Python."""

import subprocess
import uuid

from safetensors.torch import load_file

from comfy_host import load_workflow, node_output
from quick_settings import TINY, quick

# Every node the pack registers (what /object_info lists under its module).
PACK_NODES = {
    "SmoothVideo_VLScore", "SmoothVideo_SelectVideoFrames", "SmoothVideo_SmoothNoiseSampler",
    "SmoothVideo_SameNoiseForAllFrames", "SmoothVideo_InflateUNet", "SmoothVideo_CrossFrameAttention",
    "SmoothVideo_DDIMInvertVideo", "SmoothVideo_OneShotTune", "SmoothVideo_LoadTunedVideoWeights",
    "SmoothVideo_SmoothNoise", "SmoothVideo_InflateControlVideo", "SmoothVideo_LoadLoveuClip",
}


def output_file(server, entry, node_id: str, index: int = 0):
    """The path of the index-th file a node of a finished prompt wrote (SaveImage, SaveVideo)."""
    item = node_output(entry, node_id)["images"][index]
    return server.base / item["type"] / item["subfolder"] / item["filename"]


def tiny_workflow(name: str, video: str, **save_names) -> dict:
    """The workflow with TINY settings on `video`; save_names maps a One-shot Tune save_name to another."""
    prompt = quick(load_workflow(name), TINY)
    prompt["1"]["inputs"]["file"] = video
    for node in prompt.values():
        if node["class_type"] == "SmoothVideo_OneShotTune":
            node["inputs"]["save_name"] = save_names.get(node["inputs"]["save_name"], node["inputs"]["save_name"])
    return prompt


def tune_graph(video: str, **tune_inputs) -> dict:
    """LoadVideo .. One-shot Tune of tune_a_video_smooth (nodes 1-10), TINY settings, one step."""
    full = quick(load_workflow("tune_a_video_smooth"), TINY)
    prompt = {node_id: full[node_id] for node_id in map(str, range(1, 11)) if node_id in full}
    prompt["1"]["inputs"]["file"] = video
    prompt["10"]["inputs"].update(steps=1, checkpoint_every=0, save_name=f"test_{uuid.uuid4().hex[:6]}")
    prompt["10"]["inputs"].update(tune_inputs)
    return prompt


def save_latent(samples) -> dict:
    return {"class_type": "SaveLatent", "inputs": {"samples": samples, "filename_prefix": f"test/{uuid.uuid4().hex[:8]}"}}


def invert_graph(video: str) -> dict:
    """LoadVideo .. DDIM Invert Video on the inflated (untuned) model -> SaveLatent."""
    prompt = tune_graph(video)
    del prompt["10"]
    prompt["11"] = {
        "class_type": "SmoothVideo_DDIMInvertVideo",
        "inputs": {"model": ["9", 0], "latent": ["5", 0], "conditioning": ["8", 0], "steps": 2},
    }
    prompt["12"] = save_latent(["11", 0])
    return prompt


def sampler_graph(**sampler_inputs) -> dict:
    """Three empty latents sampled by SamplerCustom with the Smooth Noise Sampler -> SaveLatent."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "smoothvideo_tiny_sd15.safetensors"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red ball", "clip": ["1", 1]}},
        "4": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "ddim_uniform", "steps": 2, "denoise": 1.0}},
        "5": {"class_type": "SmoothVideo_SmoothNoiseSampler",
              "inputs": {"lambda1": 1000.0, "lambda3": 0.5, "start_percent": 0.0, "end_percent": 1.0}},
        "6": {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": True, "noise_seed": 1, "cfg": 3.0, "positive": ["3", 0],
            "negative": ["3", 0], "sampler": ["5", 0], "sigmas": ["4", 0], "latent_image": ["2", 0]}},
        "7": save_latent(["6", 0]),
    }
    prompt["5"]["inputs"].update(sampler_inputs)
    return prompt


def tiny_unet_weights(server) -> dict:
    """The UNet tensors of the tiny SD1.5 checkpoint (fp16), keys without "model.diffusion_model."."""
    prefix = "model.diffusion_model."
    checkpoint = load_file(str(server.base / "models" / "checkpoints" / "smoothvideo_tiny_sd15.safetensors"))
    return {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}


def ip2p_frames_graph(video: str, steps: int) -> dict:
    """The tiny InstructPix2Pix model on 4 frames of `video` at 64 px: "7" InstructPixToPixConditioning
    (its LATENT is output 2), "9" ddim_uniform sigmas of `steps`, "10" the same seed noise for every frame."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "smoothvideo_tiny_ip2p.safetensors"}},
        "2": {"class_type": "LoadVideo", "inputs": {"file": video}},
        "3": {"class_type": "GetVideoComponents", "inputs": {"video": ["2", 0]}},
        "4": {"class_type": "SmoothVideo_SelectVideoFrames", "inputs": {"images": ["3", 0], "start": 0, "count": 4, "stride": 1, "width": 64, "height": 64}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "make it snowy", "clip": ["1", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "7": {"class_type": "InstructPixToPixConditioning", "inputs": {"positive": ["5", 0], "negative": ["6", 0], "vae": ["1", 2], "pixels": ["4", 0]}},
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "ddim_uniform", "steps": steps, "denoise": 1.0}},
        "10": {"class_type": "SmoothVideo_SameNoiseForAllFrames", "inputs": {"noise_seed": 3}},
    }


def dual_cfg_guider(model: list) -> dict:
    """InstructPix2Pix's three-way CFG on ip2p_frames_graph's conditioning (text 7.5, image 1.5)."""
    return {"class_type": "DualCFGGuider", "inputs": {
        "model": model, "cond1": ["7", 0], "cond2": ["7", 1], "negative": ["7", 1],
        "cfg_conds": 7.5, "cfg_cond2_negative": 1.5, "style": "regular"}}


def run_host_script(host, script, timeout: int = 900) -> str:
    """A check script run by the host's own Python in its ComfyUI folder, with the ComfyUI folder, the
    custom_nodes folder holding the pack and the tiny SD1.5 checkpoint as arguments: its last line."""
    version, folder = host
    comfy = folder / "ComfyUI"
    run = subprocess.run(
        [str(folder / "venv" / "bin" / "python"), str(script), str(comfy), str(folder / "base" / "custom_nodes"),
         str(folder / "base" / "models" / "checkpoints" / "smoothvideo_tiny_sd15.safetensors")],
        cwd=comfy, capture_output=True, text=True, timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout.strip().splitlines()[-1]
