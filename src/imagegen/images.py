"""Sample grids people can look at."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from imagegen.fileio import write_bytes


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """uint8 (N,H,W,C) -> one uint8 (rows*H', cols*W', C) image with ``pad`` pixels between tiles."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"make_grid expects uint8 images, got {images.dtype}")
    n, h, w, c = images.shape
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    if scale > 1:
        grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
    return grid


def save_png(path: Path | str, image: np.ndarray) -> Path:
    """Write a uint8 (H,W,C) array as PNG, atomically."""
    arr = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def save_grid(path: Path | str, images: np.ndarray, scale: int | None = None) -> Path:
    """Grid of uint8 images as a PNG, upscaled so small images stay visible (about 512 px wide)."""
    grid = make_grid(images)
    if scale is None:
        scale = max(1, 512 // max(grid.shape[1], 1))
    return save_png(path, make_grid(images, scale=scale))
