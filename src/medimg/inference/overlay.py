"""A Grad-CAM heat map over the preprocessed image, captioned, as a PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from medimg.atomic import write_file

HEAT_ALPHA = 0.45  # enough colour to read the map, enough image to see the anatomy under it
HEAT_COLOURMAP = "jet"
FIGURE_SIZE_IN = (4.0, 4.5)
DPI = 100


def write_overlay(path: Path, pixels: np.ndarray, heat_map: np.ndarray, caption: str) -> Path:
    """Write `heat_map` (H, W) in [0, 1] over `pixels` (H, W, C) uint8, titled `caption`.

    `pixels` is the model's input (the image after load_image), so the map lines up with
    what the model saw. The PNG is written whole or not at all.
    """
    # A bare Figure renders with Agg, without pyplot's global state or a display.
    from matplotlib.figure import Figure

    if heat_map.shape != pixels.shape[:2]:
        raise ValueError(f"heat map {heat_map.shape} and image {pixels.shape} differ in size")
    fig = Figure(figsize=FIGURE_SIZE_IN, layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(pixels)
    ax.imshow(heat_map, cmap=HEAT_COLOURMAP, vmin=0.0, vmax=1.0, alpha=HEAT_ALPHA)
    ax.set_title(caption, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    write_file(path, buffer.getvalue())
    return path
