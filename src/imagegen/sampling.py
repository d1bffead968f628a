"""Which sampler settings a model is drawn with: the one place that decides it.

Three sources, later ones winning:

1. ``params.sample`` (sampler, steps, eta, guidance scale, x0 clipping), the project-wide defaults;
2. the model's own ``sampling`` record in its ``model.json`` (a progressively distilled student stores the
   DDIM grid it was trained for: ``{"sampler": "ddim", "steps": 4, "timesteps": [...], "eta": 0.0}``);
3. explicit overrides (``imagegen sample --steps 8``, keyword arguments to ``generate_images``); ``None``
   values mean "not given".

An explicit ``steps`` (or ``sampler="ddpm"``) without explicit ``timesteps`` drops the model's own grid, so
``--steps 8`` means DDIM's evenly spaced 8 steps. The result always carries a ``timesteps`` key (``None`` when
the grid follows from ``steps``), so resolving an already resolved dict again changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SAMPLER_KEYS = ("sampler", "steps", "eta", "guidance_scale", "clip_x0", "timesteps")


def sampler_kwargs(
    params: Any = None,
    meta: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``family_module("ddpm").generate`` (other families ignore them).

    ``params`` is a :class:`imagegen.config.Params` (or None: no project defaults, the sampler's own apply),
    ``meta`` a model's ``model.json`` contents, ``overrides`` explicit choices (None values are ignored).
    """
    kwargs: dict[str, Any] = {}
    if params is not None:
        s = params.sample
        kwargs.update(
            sampler=s.sampler, steps=s.steps, eta=s.eta, guidance_scale=s.guidance_scale, clip_x0=s.clip_x0
        )
    kwargs["timesteps"] = None
    own = (meta or {}).get("sampling")
    if own:
        kwargs.update({k: v for k, v in own.items() if k in SAMPLER_KEYS and v is not None})
        if own.get("timesteps") is not None:
            kwargs["timesteps"] = [int(t) for t in own["timesteps"]]
    given = {k: v for k, v in (overrides or {}).items() if v is not None or k == "timesteps"}
    if ("steps" in given or given.get("sampler") == "ddpm") and "timesteps" not in given:
        kwargs["timesteps"] = None
    kwargs.update(given)
    return kwargs


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
    from rich.progress import Progress

    from imagegen.artifact import load_model
    from imagegen.data.loader import to_uint8
    from imagegen.training.families import family_module

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
