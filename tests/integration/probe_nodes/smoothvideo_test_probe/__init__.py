"""Test-only custom nodes. SmoothVideoTest_LiveObjects looks inside the server process: after a
full garbage collection it counts the live objects of SmoothVideo's tuning (tuners, their views
of the video model, optimizers) and the video models' temporal layers. SmoothVideoTest_ReplaceAttn1
stands in for a third-party node that replaces a block's self-attention.

Loaded only by the integration tests' server (an extra custom_nodes path passed with
--extra-model-paths-config), never by a user's ComfyUI.
"""

import gc

import torch

WATCHED = {
    "Tuner": "smooth_core.tune",
    "NativeTunable": "nodes.video_tuning",
    "TemporalLayers": "nodes.video_patches",
}


def live_objects() -> dict:
    gc.collect()
    counts = {name: 0 for name in WATCHED}
    counts["Optimizer"] = 0
    for obj in gc.get_objects():
        cls = type(obj)
        module = vars(cls).get("__module__")
        if cls.__name__ in WATCHED and isinstance(module, str) and WATCHED[cls.__name__] in module:
            counts[cls.__name__] += 1
        elif isinstance(obj, torch.optim.Optimizer):
            counts["Optimizer"] += 1
    return counts


class LiveObjects:
    CATEGORY = "testing"
    FUNCTION = "probe"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        # "after": any output, only to order the probe after that node in the same prompt; "tick":
        # a Tick's, to run a node of the prompt before it.
        return {"required": {}, "optional": {"after": ("*",), "tick": ("INT",)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never cached: every run looks again

    def probe(self, after=None, tick=None):
        return {"ui": {"live": [live_objects()]}}


class ReplaceAttn1:
    """Replaces the middle block's self-attention with plain attention, under the whole-block key
    (("middle", 0)), as a third-party attention node may."""

    CATEGORY = "testing"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    def patch(self, model):
        import comfy.ldm.modules.attention

        def plain(q, k, v, extra_options):
            return comfy.ldm.modules.attention.optimized_attention(q, k, v, extra_options["n_heads"])

        patched = model.clone()
        patched.set_model_attn1_replace(plain, "middle", 0)
        return (patched,)


class Tick:
    """Returns its number: a node that runs anew for every new number (a prompt's first node)."""

    CATEGORY = "testing"
    FUNCTION = "tick"
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"n": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def tick(self, n):
        return (n,)


NODE_CLASS_MAPPINGS = {"SmoothVideoTest_LiveObjects": LiveObjects, "SmoothVideoTest_ReplaceAttn1": ReplaceAttn1,
                       "SmoothVideoTest_Tick": Tick}

