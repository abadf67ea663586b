"""SmoothVideo core: the paper's math, model inflation, tuning and sampling in pure torch.

Nothing here imports ComfyUI; the `nodes/` package adapts these functions to ComfyUI.
Submodules are imported lazily by their users (`from smooth_core import metrics`), so
importing the package itself costs nothing and needs only torch.
"""

__version__ = "0.1.0"
