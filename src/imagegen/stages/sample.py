"""``imagegen sample``: a trained model folder -> a PNG grid and an ``.npz`` of uint8 images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from imagegen.artifact import load_model
from imagegen.data.loader import to_uint8
from imagegen.fileio import atomic_path
from imagegen.images import save_grid
from imagegen.sampling import sampler_kwargs
from imagegen.training.families import family_module


def generate_images(
    model_dir: Path,
    n: int,
    seed: int,
    batch_size: int = 256,
    show_progress: bool = True,
    params: Any = None,
    **sampler: Any,
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (n,H,W,C) images (and the labels they were conditioned on, if any) from ``model_dir``.

    The same ``seed`` gives the same images: all randomness comes from ``numpy.random.default_rng(seed)``.
    Diffusion sampler settings follow :func:`imagegen.sampling.sampler_kwargs`: ``params.sample`` (when
    ``params`` is given), then the model's own ``sampling`` record (a distilled student's grid), then the
    ``sampler`` keywords given here (None values count as not given).
    """
    loaded = load_model(model_dir)
    sampler = sampler_kwargs(params, loaded.meta, sampler)
    module = family_module(loaded.name)
    rng = np.random.default_rng(seed)
    spec = loaded.family.spec
    conditional = bool(spec.get(loaded.name, {}).get("conditional", False))
    labels = (np.arange(n) % spec["num_classes"]).astype(np.int32) if conditional else None
    kwargs = dict(sampler) if loaded.name == "ddpm" else {}
    if loaded.name == "ddpm" and kwargs.get("predict") is None:
        from imagegen.training.predict import compiled_predictor

        # One compiled predictor for every chunk (ddpm.generate would otherwise build one per call).
        net = loaded.family.networks["unet_ema" if kwargs.get("use_ema", True) else "unet"]
        kwargs["predict"] = compiled_predictor(net)
    chunks = []
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task(f"sample {loaded.name}", total=n)
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            part_labels = None if labels is None else labels[start : start + k]
            chunks.append(to_uint8(module.generate(loaded.family, k, rng, labels=part_labels, **kwargs)))
            progress.advance(task, k)
    return np.concatenate(chunks), labels


def run_sample(
    model_dir: Path,
    out_dir: Path,
    n: int,
    seed: int,
    show_progress: bool = True,
    params: Any = None,
    **sampler: Any,
) -> Path:
    """Write ``samples.npz`` and ``grid.png``; sampler settings as in :func:`generate_images`."""
    images, labels = generate_images(model_dir, n, seed, show_progress=show_progress, params=params, **sampler)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "samples.npz", suffix=".npz") as tmp:
        arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
        np.savez_compressed(tmp, **arrays)
    save_grid(out_dir / "grid.png", images[: min(n, 256)])
    return out_dir
