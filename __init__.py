"""SmoothVideo for ComfyUI: the SmoothVideo paper's smooth loss, Eq. 5 noise correction and VL score.

ComfyUI imports this folder as a custom-node package. The math lives in smooth_core/
(no ComfyUI import); nodes/ adapts it, one family of nodes per module, each listing NODES.
The video-model nodes (Inflate UNet, Cross-frame Attention, DDIM Invert Video, One-shot Tune,
Load Tuned Video Weights) run a diffusers UNet; without diffusers the others still load.
"""

import logging

from .nodes import metrics, sampler

try:
    from .nodes import tuning, video_model
except ImportError as error:
    if not (error.name or "").startswith("diffusers"):
        raise
    logging.warning(
        "SmoothVideo: diffusers cannot be imported (%s), so Inflate UNet, Cross-frame Attention, DDIM Invert "
        "Video, One-shot Tune and Load Tuned Video Weights are not loaded; VL Score, Select Video Frames, the "
        "Smooth Noise Sampler and Same Noise For All Frames are. Install the pack's requirements.txt into "
        "ComfyUI's Python (pip install -r requirements.txt) and restart ComfyUI.", error)
    _NODES = [*metrics.NODES, *sampler.NODES]
else:
    _NODES = [*metrics.NODES, *video_model.NODES, *sampler.NODES, *tuning.NODES]
_SCHEMAS = [node.define_schema() for node in _NODES]

NODE_CLASS_MAPPINGS = {schema.node_id: node for schema, node in zip(_SCHEMAS, _NODES)}
NODE_DISPLAY_NAME_MAPPINGS = {schema.node_id: schema.display_name for schema in _SCHEMAS}
# web/smoothvideo.js shows the nodes' text results (scores) on the node in the browser.
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
