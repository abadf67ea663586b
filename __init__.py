"""SmoothVideo for ComfyUI: the SmoothVideo paper's smooth loss, Eq. 5 noise correction and VL score.

ComfyUI imports this folder as a custom-node package. The math lives in smooth_core/
(no ComfyUI import); nodes/ adapts it, one family of nodes per module, each listing NODES.
The video model is patches on ComfyUI's own UNet (nodes/video_patches.py): the nodes need
nothing beyond what ComfyUI itself brings.
"""

from .nodes import metrics, sampler, tuning, video_model

_NODES = [*metrics.NODES, *video_model.NODES, *sampler.NODES, *tuning.NODES]
_SCHEMAS = [node.define_schema() for node in _NODES]

NODE_CLASS_MAPPINGS = {schema.node_id: node for schema, node in zip(_SCHEMAS, _NODES)}
NODE_DISPLAY_NAME_MAPPINGS = {schema.node_id: schema.display_name for schema in _SCHEMAS}
# web/smoothvideo.js shows the nodes' text results (scores) on the node in the browser.
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
