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

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagegen.config import ANCESTRAL_SAMPLER
from imagegen.profiling import phase
from imagegen.sampler_settings import SamplerSettings

if TYPE_CHECKING:
    from imagegen.artifact import LoadedModel
    from imagegen.training.families.base import Family

SAMPLER_KEYS = ("sampler", "steps", "eta", "guidance_scale", "clip_x0", "timesteps")
BATCH_SIZE = 256
"""Images per sampler call unless a caller says otherwise (``generate_images``, the registered pyfunc)."""


def sampler_kwargs(
    params: Any = None,
    meta: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for a diffusion family's ``generate`` (other families ignore them).

    ``params`` is a :class:`imagegen.config.Params` (or None: no project defaults, the sampler's own apply),
    ``meta`` a model's ``model.json`` contents, ``overrides`` explicit choices (None values are ignored).
    """
    kwargs: dict[str, Any] = {}
    if params is not None:
        s = params.sample
        kwargs.update(sampler=s.sampler, steps=s.steps, eta=s.eta, guidance_scale=s.guidance_scale, clip_x0=s.clip_x0)
    kwargs["timesteps"] = None
    own = (meta or {}).get("sampling")
    if own:
        kwargs.update({k: v for k, v in own.items() if k in SAMPLER_KEYS and v is not None})
        if own.get("timesteps") is not None:
            kwargs["timesteps"] = [int(t) for t in own["timesteps"]]
    given = {k: v for k, v in (overrides or {}).items() if v is not None or k == "timesteps"}
    if ("steps" in given or given.get("sampler") == ANCESTRAL_SAMPLER) and "timesteps" not in given:
        kwargs["timesteps"] = None
    kwargs.update(given)
    return kwargs


SampleFn = Callable[..., np.ndarray]
"""``sample(n, rng, labels=None) -> float32 images in [-1, 1]`` (labels cycle over the classes)."""


def make_sampler(
    family: Family,
    sampling: Mapping[str, Any] | None = None,
    predict: Callable[..., Any] | None = None,
) -> SampleFn:
    """A sampler of ``family`` with fixed settings and one compiled predictor reused across calls.

    For a diffusion family ``sampling`` holds the ``generate`` keywords (see :func:`sampler_kwargs`); other
    families ignore it. ``predict`` is a compiled predictor of its denoiser (the declared
    ``FamilySpec.denoiser``) to reuse (one is made otherwise). Images drawn with the same ``rng`` seed start
    from the same noise (x_T or z is the first draw), which is what makes comparisons on the same noise possible.
    """
    from imagegen.training.families import family_spec

    spec = family_spec(family.spec["family"])
    # A diffusion family takes the sampler keywords; the others one SamplerSettings (a style-based generator's
    # truncation).
    given = {k: v for k, v in (sampling or {}).items() if k != "truncation"}
    kwargs = given if spec.diffusion else {"settings": SamplerSettings.resolve(overrides=sampling)}
    if spec.denoiser is not None and kwargs.get("predict") is None:
        from imagegen.training.predict import compiled_predictor

        ema, raw = spec.denoiser
        net = family.networks[ema if kwargs.get("use_ema", True) else raw]
        kwargs["predict"] = predict or compiled_predictor(net)
    generate = spec.generate

    def sample(n: int, rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
        return generate(family, n, rng, labels=labels, **kwargs)

    return sample


def cycled_labels(spec: Mapping[str, Any], n: int, start: int = 0) -> np.ndarray | None:
    """``arange(start, start + n) % num_classes`` for a conditional model, None for an unconditional one."""
    conditional = bool(spec.get(spec["family"], {}).get("conditional", False))
    return (np.arange(start, start + n) % spec["num_classes"]).astype(np.int32) if conditional else None


def iter_sample_batches(
    sample: SampleFn,
    spec: Mapping[str, Any],
    n: int,
    seed: int,
    batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """uint8 images and their labels (None if unconditional), one sampler batch of ``batch_size`` at a time.

    All batches draw from one ``default_rng(seed)`` in order, so a caller that writes each batch away as it
    comes (memory independent of ``n``) gets exactly the images :func:`sample_images` returns. The batches are
    the sampler's own: a diffusion sampler draws fresh noise per step for the whole batch, so splitting a batch
    differently would change the images.
    """
    from imagegen.data.loader import to_uint8

    rng = np.random.default_rng(seed)
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        labels = cycled_labels(spec, k, start)
        yield to_uint8(sample(k, rng, labels)), labels


def sample_images(
    sample: SampleFn,
    spec: Mapping[str, Any],
    n: int,
    seed: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (n,H,W,C) images in batches from one ``default_rng(seed)``; their labels (if any)."""
    chunks = []
    for images, _ in iter_sample_batches(sample, spec, n, seed, batch_size):
        chunks.append(images)
        if on_batch is not None:
            on_batch(len(images))
    return np.concatenate(chunks), cycled_labels(spec, n)


@phase("sample", "work")
def generate_images(
    model_dir: Path,
    n: int,
    seed: int,
    batch_size: int = BATCH_SIZE,
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

    loaded, sample = load_sampler(model_dir, params, **sampler)
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task(f"sample {loaded.name}", total=n)
        return sample_images(sample, loaded.family.spec, n, seed, batch_size, lambda k: progress.advance(task, k))


def load_sampler(model_dir: Path, params: Any = None, **sampler: Any) -> tuple[LoadedModel, SampleFn]:
    """The loaded model in ``model_dir`` and its sampler, with settings as :func:`generate_images` resolves them."""
    from imagegen.artifact import load_model

    loaded = load_model(model_dir)
    return loaded, make_sampler(loaded.family, sampler_kwargs(params, loaded.meta, sampler))
