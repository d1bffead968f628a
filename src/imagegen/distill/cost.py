"""What a model costs to sample: parameters, multiply-accumulates (MACs) and measured images per second.

MACs are counted by :func:`count_macs` from the shapes seen in one eager forward pass of a single example:
Conv2D (out_h * out_w * k_h * k_w * in_c / groups * out_c), Conv2DTranspose (in_h * in_w * k_h * k_w * in_c *
out_c), Dense (positions * in * units) and our spatial self-attention (its two matrix products over pairs of
positions, 2 * (h*w)^2 * c, and its four C x C projections per position). Normalisation, activations, additions
and the softmax are left out: they are a few percent of these networks' arithmetic. FLOPs are about 2 x MACs. A
diffusion model's cost per image is its cost per network call times the sampling steps (times two with
classifier-free guidance at a scale other than 0 or 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np

from imagegen.config import ANCESTRAL_SAMPLER
from imagegen.models.layers import AttentionBlock, CrossAttentionBlock
from imagegen.sampler_settings import SamplerSettings
from imagegen.sampling import SampleFn
from imagegen.training.families import family_spec
from imagegen.training.families.base import Family
from imagegen.training.families.spec import FamilySpec


def _declared(family: Family) -> tuple[FamilySpec, Mapping[str, Any]]:
    """The family's declaration and its params section (from the model spec)."""
    name = family.spec["family"]
    return family_spec(name), family.spec[name]


def _layer_macs(layer: keras.layers.Layer, in_shape: tuple, out_shape: tuple) -> int:
    # The attention blocks multiply by their Dense layers' weights themselves (imagegen.models.layers.project_rows),
    # so their projections are counted here: self-attention's q/k/v and output (4 C x C per position) and its two
    # products over pairs of positions; cross-attention's query and output (2 C x C per position; its keys and
    # values come from calling its Dense layer on the caption tokens, counted as a Dense).
    if isinstance(layer, AttentionBlock):
        _, h, w, c = in_shape
        return h * w * 4 * c * c + 2 * (h * w) ** 2 * c
    if isinstance(layer, CrossAttentionBlock):
        _, h, w, c = in_shape
        return h * w * 2 * c * c
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return int(np.prod(in_shape[1:-1])) * kh * kw * in_shape[-1] * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return int(np.prod(out_shape[1:-1])) * kh * kw * (in_shape[-1] // layer.groups) * layer.filters
    if isinstance(layer, keras.layers.Dense):
        return int(np.prod(in_shape[1:-1], dtype=np.int64)) * in_shape[-1] * layer.units
    return 0


def _counted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    kinds = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense, AttentionBlock, CrossAttentionBlock)
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if isinstance(layer, kinds)]


@contextmanager
def _recording(layers: list[keras.layers.Layer]) -> Iterator[list[int]]:
    """Wrap each layer's ``call`` for one pass, appending its MACs; always restores the class's ``call``."""
    counts: list[int] = []

    def wrap(layer: keras.layers.Layer) -> Callable[..., Any]:
        original = type(layer).call

        def call(*args: Any, **kwargs: Any) -> Any:
            out = original(layer, *args, **kwargs)
            first = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]  # cross-attention: [x, ...]
            counts.append(_layer_macs(layer, tuple(first.shape), tuple(out.shape)))
            return out

        return call

    for layer in layers:
        object.__setattr__(layer, "call", wrap(layer))
    try:
        yield counts
    finally:
        for layer in layers:
            if "call" in layer.__dict__:
                object.__delattr__(layer, "call")


def count_macs(model: keras.Model, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``inputs`` (one example: batch size 1)."""
    with _recording(_counted_layers(model)) as counts:
        model(inputs, training=False)
    return int(sum(counts))


def example_inputs(family: Family) -> Any:
    """One all-zeros example for the family's sampling network, as it is called while sampling: the declared
    noise (x_T and a timestep for a diffusion family, z otherwise), plus a label when class-conditioned."""
    declared, section = _declared(family)
    noise = np.zeros((1, *declared.noise_shape(family.spec)), np.float32)
    inputs = [noise, np.zeros((1,), np.float32)] if declared.diffusion else [noise]
    if section.get("conditional"):
        inputs.append(np.zeros((1,), np.int32))
    return inputs if len(inputs) > 1 else noise


def parameters(family: Family) -> int:
    """Parameters of the networks the family declares it samples with (a DDPM's EMA U-Net, a GAN's generator, a
    VAE's decoder); a discriminator, an encoder or an EMA duplicate are not part of the sampling cost."""
    declared, _ = _declared(family)
    return int(sum(family.networks[n].count_params() for n in declared.sampling_networks))


def sampling_steps(family: Family, settings: SamplerSettings | None = None) -> int:
    """Network calls per image before guidance: the sampler's steps for a diffusion family, else 1."""
    declared, section = _declared(family)
    if not declared.diffusion:
        return 1
    settings = settings or SamplerSettings()
    if settings.sampler == ANCESTRAL_SAMPLER:
        return int(section["timesteps"])
    if settings.timesteps is not None:
        return len(settings.timesteps)
    return int(settings.steps)


def macs_per_image(family: Family, settings: SamplerSettings | None = None) -> int:
    """MACs to generate one image: one call of the first sampling network, times the sampling steps for a diffusion
    model (times two with classifier-free guidance at a scale other than 0 or 1: two passes per step)."""
    declared, section = _declared(family)
    net = family.networks[declared.sampling_networks[0]]
    per_call = count_macs(net, example_inputs(family))
    if not declared.diffusion:
        return per_call
    scale = (settings or SamplerSettings()).guidance_scale
    guided = section["conditional"] and scale not in (0.0, 1.0)
    return per_call * sampling_steps(family, settings) * (2 if guided else 1)


def images_per_second(sample: SampleFn, n: int, repeats: int = 3) -> float:
    """Sampling throughput at batch size ``n``: the best of ``repeats`` timed calls after one warm-up call
    (which compiles). Wall-clock on whatever device the backend uses."""
    rng = np.random.default_rng(0)
    np.asarray(sample(n, rng))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(sample(n, rng))
        best = min(best, time.perf_counter() - start)
    return n / best


class TimedSampler:
    """A sampler that times its calls, so the images drawn for the quality metrics also give images/s.

    :meth:`images_per_second` is the best rate among full-size calls after the first (which compiles), the same
    figure :func:`images_per_second` measures with extra timed calls; None when fewer than two full-size calls
    were made.
    """

    def __init__(self, sample: SampleFn) -> None:
        self._sample = sample
        self.calls: list[tuple[int, float]] = []  # (images, seconds)

    def __call__(self, n: int, rng: np.random.Generator, labels: np.ndarray | None = None) -> np.ndarray:
        start = time.perf_counter()
        images = np.asarray(self._sample(n, rng, labels))
        self.calls.append((n, time.perf_counter() - start))
        return images

    def images_per_second(self) -> float | None:
        if not self.calls:
            return None
        full = self.calls[0][0]
        rates = [n / seconds for n, seconds in self.calls[1:] if n == full and seconds > 0]
        return max(rates) if rates else None
