"""POST /interrupt stops DDIM inversion and Smooth Noise sampling within seconds, and the server
runs the next prompt. (Tuning: tests/integration/test_tune_a_video.py.)"""

import time

import pytest

from comfy_host import ComfyError, node_output
from graphs import invert_graph, sampler_graph

pytestmark = pytest.mark.integration


def interrupt_after_first_step(server, prompt: dict, node_id: str) -> float:
    """Queues `prompt`, interrupts once `node_id` reported progress, and returns the seconds
    from the interrupt to the prompt's end (which must be an interruption)."""
    events = server.progress_events(timeout=300)
    prompt_id = server.queue(prompt)
    for event in events:
        if event["prompt_id"] == prompt_id and event["node"] == node_id and event["value"] >= 1:
            break
    events.close()
    asked = time.time()
    server.interrupt()
    with pytest.raises(ComfyError, match="interrupted"):
        server.wait(prompt_id, timeout=60)
    return time.time() - asked


def test_interrupt_stops_ddim_inversion(server, sample_video):
    prompt = invert_graph(sample_video[0])
    prompt["11"]["inputs"]["steps"] = 999
    assert interrupt_after_first_step(server, prompt, "11") < 10
    prompt["11"]["inputs"]["steps"] = 2  # the next prompt runs
    assert node_output(server.run(prompt), "12")["latents"]


def test_interrupt_stops_the_smooth_noise_sampler(server):
    prompt = sampler_graph()
    prompt["4"]["inputs"]["steps"] = 999
    assert interrupt_after_first_step(server, prompt, "6") < 10
    prompt["4"]["inputs"]["steps"] = 2
    assert node_output(server.run(prompt), "7")["latents"]
