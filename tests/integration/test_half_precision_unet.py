"""The Tune-A-Video workflow on a UNet that ComfyUI stores in fp16 but computes in float32
(--fp16-unet on a CPU: ComfyUI's "manual cast", also its way on GPUs without fast fp16). The
video UNet is built in the dtype ComfyUI computes in; before, its plain torch layers kept the
fp16 weights and every UNet call failed on float32 activations ("mat1 and mat2 must have the
same dtype"), untuned or tuned. The training-free InstructPix2Pix workflow (Cross-frame
Attention, chunked, with the Smooth Noise Sampler) goes through the same build."""

import math
import uuid

import pytest

from comfy_host import ComfyServer, node_output
from graphs import tiny_workflow

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fp16_server():
    with ComfyServer(extra_args=("--fp16-unet",)) as running:
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
