"""ComfyUI adapters over smooth_core. The only package of the pack that imports ComfyUI."""
