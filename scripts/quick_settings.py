"""Small settings for the example workflows, so they run on a CPU in minutes.

The workflows in workflows/ carry the paper's settings (24 frames at 512 px, 500 tuning
steps, 50 DDIM steps). The demo and the tests run the same graphs with these values
instead, set by node class on every node of that class.
"""

from __future__ import annotations

QUICK = {
    "SmoothVideo_SelectVideoFrames": {"count": 6, "width": 96, "height": 96},
    "SmoothVideo_OneShotTune": {"steps": 10, "checkpoint_every": 5, "learning_rate": 1e-4},
    "SmoothVideo_DDIMInvertVideo": {"steps": 10},
    "BasicScheduler": {"steps": 10},
}

# Smaller still, for the integration tests: 4 frames of 80 px (10 x 10 latents, k = 8 still fits).
TINY = {
    "SmoothVideo_SelectVideoFrames": {"count": 4, "width": 80, "height": 80},
    "SmoothVideo_OneShotTune": {"steps": 4, "checkpoint_every": 2, "learning_rate": 1e-4},
    "SmoothVideo_DDIMInvertVideo": {"steps": 4},
    "BasicScheduler": {"steps": 4},
}


def quick(prompt: dict, overrides: dict = QUICK) -> dict:
    """The prompt with `overrides` applied (a new dict; the input is left alone)."""
    out = {}
    for node_id, node in prompt.items():
        inputs = dict(node["inputs"])
        inputs.update(overrides.get(node["class_type"], {}))
        out[node_id] = {**node, "inputs": inputs}
    return out
