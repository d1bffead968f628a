"""``imagegen sample``: a trained model folder -> a PNG grid and an ``.npz`` of uint8 images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imagegen.fileio import atomic_path
from imagegen.images import save_grid
from imagegen.sampling import generate_images


def run_sample(
    model_dir: Path,
    out_dir: Path,
    n: int,
    seed: int,
    show_progress: bool = True,
    params: Any = None,
    **sampler: Any,
) -> Path:
    """Write ``samples.npz`` and ``grid.png``; sampler settings as in :func:`generate_images`.

    ``prompt`` (in ``sampler``) needs a caption-conditioned model; any other is refused naming the folder.
    """
    if sampler.get("prompt") is not None:
        from imagegen.artifact import read_model_meta
        from imagegen.errors import ConfigError

        meta = read_model_meta(model_dir)
        if not meta["spec"].get(meta["family"], {}).get("captions", False):
            raise ConfigError(f"{model_dir}: --prompt needs a caption-conditioned model (ddpm.captions=true)")
    images, labels = generate_images(model_dir, n, seed, show_progress=show_progress, params=params, **sampler)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "samples.npz", suffix=".npz") as tmp:
        arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
        np.savez_compressed(tmp, **arrays)
    save_grid(out_dir / "grid.png", images[: min(n, 256)])
    return out_dir
