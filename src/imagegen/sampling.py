"""Sampling a model: its :class:`~imagegen.sampler_settings.SamplerSettings` resolved once, a sampler of fixed
settings, and images drawn in batches from one seed.

Settings come from the project's ``sample`` section, the model's own ``sampling`` record (a distilled student's
grid) and explicit overrides, later ones winning (:meth:`SamplerSettings.resolve`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imagegen.profiling import phase
from imagegen.sampler_settings import SamplerSettings

if TYPE_CHECKING:
    from imagegen.artifact import LoadedModel
    from imagegen.config import SampleConfig
    from imagegen.training.families.base import Family

BATCH_SIZE = 256
"""Images per sampler call unless a caller says otherwise (``generate_images``, the registered pyfunc)."""


def resolve_settings(
    defaults: SampleConfig | None = None,
    meta: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SamplerSettings:
    """The settings a model with ``model.json`` contents ``meta`` is sampled with: the project's ``sample``
    section ``defaults`` (None: the sampler's own defaults), the model's ``sampling`` record, ``overrides``."""
    return SamplerSettings.resolve(defaults, (meta or {}).get("sampling"), overrides)


SampleFn = Callable[..., np.ndarray]
"""``sample(n, rng, labels=None) -> float32 images in [-1, 1]`` (labels cycle over the classes)."""


def make_sampler(
    family: Family,
    settings: SamplerSettings | None = None,
    predict: Callable[..., Any] | None = None,
    prompt: str | None = None,
) -> SampleFn:
    """A sampler of ``family`` with fixed ``settings`` and one compiled predictor reused across calls.

    ``prompt``: the caption every image of a caption-conditioned model is drawn for (None: the null caption).

    ``predict`` is a compiled predictor of a diffusion family's denoiser (the declared ``FamilySpec.denoiser``,
    its EMA network) to reuse; one is made otherwise. Images drawn with the same ``rng`` seed start from the
    same noise (x_T or z is the first draw), which is what makes comparisons on the same noise possible.
    """
    from imagegen.training.families import family_spec

    spec = family_spec(family.spec["family"])
    settings = settings or SamplerSettings()
    if spec.denoiser is not None and predict is None:
        from imagegen.training.predict import compiled_predictor

        predict = compiled_predictor(family.networks[spec.denoiser[0]])
    generate = spec.generate

    def sample(n: int, rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
        return generate(family, n, rng, labels=labels, settings=settings, predict=predict, prompt=prompt)

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
    defaults: SampleConfig | None = None,
    prompt: str | None = None,
    **overrides: Any,
) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 (n,H,W,C) images (and the labels they were conditioned on, if any) from ``model_dir``.

    The same ``seed`` gives the same images: all randomness comes from ``numpy.random.default_rng(seed)``.
    Sampler settings follow :func:`resolve_settings`: the ``sample`` section ``defaults`` (when given), then
    the model's own ``sampling`` record (a distilled student's grid), then the ``overrides`` given here
    (:class:`SamplerSettings` fields; None values count as not given). ``prompt``: see :func:`make_sampler`.
    """
    from rich.progress import Progress

    loaded, sample = load_sampler(model_dir, defaults, prompt, **overrides)
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task(f"sample {loaded.name}", total=n)
        return sample_images(sample, loaded.family.spec, n, seed, batch_size, lambda k: progress.advance(task, k))


def load_sampler(
    model_dir: Path, defaults: SampleConfig | None = None, prompt: str | None = None, **overrides: Any
) -> tuple[LoadedModel, SampleFn]:
    """The loaded model in ``model_dir`` and its sampler, with settings as :func:`generate_images` resolves them."""
    from imagegen.artifact import load_model

    loaded = load_model(model_dir)
    return loaded, make_sampler(loaded.family, resolve_settings(defaults, loaded.meta, overrides), prompt=prompt)
