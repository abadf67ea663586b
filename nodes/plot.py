"""A small line chart of the tuning losses, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

SERIES_COLOURS = {"total": (230, 90, 40), "mse": (40, 120, 220), "smooth": (60, 170, 80)}


def loss_curve_image(series: dict[str, list[float]], width: int = 640, height: int = 360) -> torch.Tensor:
    """Plots each named series against the step; returns a ComfyUI IMAGE (1, height, width, 3) in [0, 1]."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 60, width - 15, 30, height - 35
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    values = [v for points in series.values() for v in points if np.isfinite(v)]
    steps = max((len(points) for points in series.values()), default=0)
    if values and steps:
        low, high = min(values), max(values)
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        for i, (name, points) in enumerate(series.items()):
            xy = [
                (left + (right - left) * (j / max(steps - 1, 1)), bottom - (bottom - top) * ((v - low) / (high - low)))
                for j, v in enumerate(points)
                if np.isfinite(v)
            ]
            colour = SERIES_COLOURS.get(name, (0, 0, 0))
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            draw.text((left + 10 + 110 * i, 8), f"{name}: {points[-1]:.4g}", fill=colour)
        draw.text((5, top), f"{high:.3g}", fill=(0, 0, 0))
        draw.text((5, bottom - 10), f"{low:.3g}", fill=(0, 0, 0))
        draw.text((left, bottom + 10), "step 1", fill=(0, 0, 0))
        draw.text((right - 60, bottom + 10), f"step {steps}", fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).unsqueeze(0)
