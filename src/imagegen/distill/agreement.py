"""Student vs teacher on the same noise: SSIM/PSNR of paired images and a side-by-side grid.

Paired images come from :func:`imagegen.sampling.sample_images` with one seed: a DDIM sampler with
eta = 0 draws only x_T and a DCGAN/VAE only z, so image ``i`` of the teacher and of the student start
from the same noise. SSIM and PSNR are scikit-image's, through :func:`imagegen.evaluation.metrics.image_similarity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imagegen.evaluation.metrics import image_similarity
from imagegen.images import make_grid


def agreement(teacher_uint8: np.ndarray, student_uint8: np.ndarray) -> dict[str, float]:
    """Mean SSIM and PSNR (dB; identical pairs left out of the mean) of the student's images to the teacher's."""
    sim = image_similarity(teacher_uint8, student_uint8)
    return {"ssim": float(sim["ssim"]), "psnr": float(sim["psnr"]), "identical": float(sim["identical"])}


def rows_grid(rows: Sequence[np.ndarray], columns: int, scale: int | None = None) -> np.ndarray:
    """One uint8 image with one row per model (teacher first) and one column per noise: ``rows[r][:columns]``."""
    if not rows:
        raise ValueError("rows_grid: nothing to show")
    columns = min(columns, *(len(r) for r in rows))
    tiles = np.concatenate([np.asarray(r[:columns]) for r in rows])
    grid = make_grid(tiles, cols=columns)
    if scale is None:
        scale = max(1, 1024 // max(grid.shape[1], 1))  # about 1024 px wide
    return make_grid(tiles, cols=columns, scale=scale)
