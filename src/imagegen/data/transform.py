"""Shape raw images into the processed format: channel count and square size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

# ITU-R 601-2 luma, the same weights PIL's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (N,H,W,C) with C in {1,3} -> (N,H,W,channels)."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 3 and channels == 1:
        gray = np.tensordot(images.astype(np.float64), _LUMA, axes=([-1], [0]))
        return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    raise ValueError(f"cannot convert {have} channels to {channels}")


def resize(images: np.ndarray, size: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Resize uint8 (N,H,W,C) to (N,size,size,C) with PIL's antialiased bilinear filter (deterministic)."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(images)
    out = np.empty((n, size, size, c), dtype=np.uint8)
    for i in range(n):
        img = images[i, ..., 0] if c == 1 else images[i]
        resized = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
        out[i] = resized.reshape(size, size, c)
        if progress is not None and (i + 1) % 1000 == 0:
            progress(1000)
    if progress is not None:
        progress(n % 1000)
    return out


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split into (train_idx, test_idx), each sorted; every class keeps >= 1 train image."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = min(int(round(len(idx) * test_fraction)), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
