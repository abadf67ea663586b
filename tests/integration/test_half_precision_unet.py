"""The Tune-A-Video workflow on a UNet that ComfyUI stores in fp16 but computes in float32
(--fp16-unet on a CPU: ComfyUI's "manual cast", also its way on GPUs without fast fp16). The
video UNet is built in the dtype ComfyUI computes in; before, its plain torch layers kept the
fp16 weights and every UNet call failed on float32 activations ("mat1 and mat2 must have the
same dtype"), untuned or tuned. The training-free InstructPix2Pix workflow (Cross-frame
Attention, chunked, with the Smooth Noise Sampler) goes through the same build."""

import math
import uuid

import pytest
from safetensors.torch import save_file

from comfy_host import ComfyServer, node_output
from graphs import tiny_unet_weights, tiny_workflow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fp16_server(host):
    with ComfyServer(host[1], extra_args=("--fp16-unet",)) as running:
        yield running


def test_the_workflow_tunes_inverts_and_samples_a_half_precision_unet(fp16_server, sample_video):
    prompt = tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=f"test_fp16_{uuid.uuid4().hex[:6]}")
    entry = fp16_server.run(prompt)
    losses = node_output(entry, "10")["losses"]
    assert len(losses) == prompt["10"]["inputs"]["steps"]
    assert all(math.isfinite(value) for step in losses for value in step)
    # ComfyUI stores this UNet in fp16 and computes in float32 (its "manual cast" on a CPU).
    assert "model weight dtype torch.float16, manual cast: torch.float32" in fp16_server.log()
    assert math.isfinite(node_output(entry, "18")["vl_score"][0])
    assert node_output(entry, "17")["images"]  # the edited video


def test_the_cross_frame_ip2p_workflow_samples_a_half_precision_unet(fp16_server, sample_video):
    prompt = tiny_workflow("video_ip2p_t2v_zero_smooth", sample_video[0])
    entry = fp16_server.run(prompt)
    assert math.isfinite(node_output(entry, "17")["vl_score"][0])
    assert node_output(entry, "16")["images"]


@pytest.fixture(scope="module")
def float32_unet(server):
    """The tiny SD1.5 UNet as a float32 file whose values fp16 cannot hold (each scaled by
    1 + 2**-14), as most published checkpoints are: written once into the hosts' models folder,
    for Load Diffusion Model."""
    name = "smoothvideo_tiny_sd15_unet_fp32.safetensors"
    path = server.base / "models" / "diffusion_models" / name
    if not path.exists():
        save_file({k: v.float() * (1 + 2**-14) for k, v in tiny_unet_weights(server).items()}, path)
    return name


def test_weights_tuned_on_a_float32_unet_load_on_an_fp16_one(server, fp16_server, sample_video, float32_unet):
    """One float32 file, held in float32 by one ComfyUI (a CPU) and in fp16 by another (a GPU,
    here --fp16-unet): weights tuned on the first are for the same base model on the second."""
    name = f"test_fp32_{uuid.uuid4().hex[:6]}"
    prompt = tiny_workflow("tune_a_video_smooth", sample_video[0], tune_a_video_smooth=name)
    prompt["20"] = {"class_type": "UNETLoader", "inputs": {"unet_name": float32_unet, "weight_dtype": "default"}}
    prompt["9"]["inputs"]["model"] = ["20", 0]
    tuned = server.run(prompt)
    prompt["10"] = {"class_type": "SmoothVideo_LoadTunedVideoWeights",
                    "inputs": {"model": ["9", 0], "weights": f"{name}.safetensors"}}
    del prompt["19"]  # the loss curve exists only where the tuning ran
    loaded = fp16_server.run(prompt)
    score = node_output(loaded, "18")["vl_score"][0]
    assert math.isfinite(score)
    # The same tuned model, its frames computed from fp16-rounded base weights: close, not equal.
    # Base weights rounded to fp16 (<= FP16_EPS/2 = 4.9e-4 each): a few FP16_EPS of a score <= 1 (1.2e-4 measured).
    assert score == pytest.approx(node_output(tuned, "18")["vl_score"][0], abs=8 * 9.77e-4)
