"""What a model costs to sample: parameters, multiply-accumulates (MACs) and measured images per second.

MACs are counted by :func:`count_macs` from the shapes seen in one eager forward pass of a single example:
Conv2D (out_h * out_w * k_h * k_w * in_c / groups * out_c), Conv2DTranspose (in_h * in_w * k_h * k_w * in_c *
out_c), Dense (positions * in * units) and the two matrix products of our spatial self-attention
(2 * (h*w)^2 * c). Normalisation, activations, additions and the softmax are left out: they are a few percent
of these networks' arithmetic. FLOPs are about 2 x MACs. A diffusion model's cost per image is its cost per
network call times the sampling steps (times two with classifier-free guidance at a scale other than 0 or 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np

from imagegen.models.layers import AttentionBlock
from imagegen.training.families import family_module
from imagegen.training.families.base import Family

#: The networks a family samples with (what "parameters" and MACs describe).
SAMPLING_NETWORKS = {"ddpm": ("unet_ema",), "dcgan": ("generator",), "vae": ("decoder",)}

SampleFn = Callable[[int, np.random.Generator], np.ndarray]


def _layer_macs(layer: keras.layers.Layer, in_shape: tuple, out_shape: tuple) -> int:
    if isinstance(layer, AttentionBlock):
        _, h, w, c = in_shape
        return 2 * (h * w) ** 2 * c
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
    kinds = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense, AttentionBlock)
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if isinstance(layer, kinds)]


@contextmanager
def _recording(layers: list[keras.layers.Layer]) -> Iterator[list[int]]:
    """Wrap each layer's ``call`` for one pass, appending its MACs; always restores the class's ``call``."""
    counts: list[int] = []

    def wrap(layer: keras.layers.Layer) -> Callable[..., Any]:
        original = type(layer).call

        def call(*args: Any, **kwargs: Any) -> Any:
            out = original(layer, *args, **kwargs)
            counts.append(_layer_macs(layer, tuple(args[0].shape), tuple(out.shape)))
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
    """One all-zeros example for the family's sampling network (as it is called while sampling)."""
    spec = family.spec
    name = spec["family"]
    shape = tuple(spec["image_shape"])
    section = spec[name]
    if name == "ddpm":
        x = [np.zeros((1, *shape), np.float32), np.zeros((1,), np.float32)]
        return [*x, np.zeros((1,), np.int32)] if section["conditional"] else x
    z = np.zeros((1, section["latent_dim"]), np.float32)
    if name == "dcgan" and section["conditional"]:
        return [z, np.zeros((1,), np.int32)]
    return z


def parameters(family: Family) -> int:
    """Parameters of the networks the family samples with (the DDPM's EMA U-Net, the GAN's generator, the
    VAE's decoder); a discriminator, an encoder or an EMA duplicate are not part of the sampling cost."""
    return int(sum(family.networks[n].count_params() for n in SAMPLING_NETWORKS[family.spec["family"]]))


def macs_per_image(family: Family, sampling: Mapping[str, Any] | None = None) -> int:
    """MACs to generate one image: one network call, times the sampling steps for a diffusion model."""
    name = family.spec["family"]
    net = family.networks[SAMPLING_NETWORKS[name][0]]
    per_call = count_macs(net, example_inputs(family))
    if name != "ddpm":
        return per_call
    sampling = dict(sampling or {})
    if sampling.get("sampler", "ddim") == "ddpm":
        calls = int(family.spec["ddpm"]["timesteps"])
    elif sampling.get("timesteps") is not None:
        calls = len(sampling["timesteps"])
    else:
        calls = int(sampling.get("steps", 50))
    guided = family.spec["ddpm"]["conditional"] and sampling.get("guidance_scale", 1.0) not in (0.0, 1.0)
    return per_call * calls * (2 if guided else 1)


def make_sampler(
    family: Family, sampling: Mapping[str, Any] | None = None, predict: Callable[..., Any] | None = None
) -> SampleFn:
    """``sample(n, rng) -> float32 images in [-1, 1]`` with one compiled predictor reused across calls.

    For a DDPM ``sampling`` holds the ``generate`` keywords (see :func:`imagegen.sampling.sampler_kwargs`);
    other families ignore it. ``predict`` is a compiled predictor of the DDPM's sampling network to reuse (one
    is made otherwise). Images drawn with the same ``rng`` seed start from the same noise (x_T or z is the
    first draw), which is what makes student-vs-teacher comparisons on the same noise possible.
    """
    name = family.spec["family"]
    module = family_module(name)
    kwargs = dict(sampling or {}) if name == "ddpm" else {}
    if name == "ddpm":
        from imagegen.training.predict import compiled_predictor

        net = family.networks["unet_ema" if kwargs.get("use_ema", True) else "unet"]
        kwargs["predict"] = predict or compiled_predictor(net)
    conditional = bool(family.spec[name].get("conditional", False))
    num_classes = int(family.spec["num_classes"])

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        labels = (np.arange(n) % num_classes).astype(np.int32) if conditional else None
        return module.generate(family, n, rng, labels=labels, **kwargs)

    return sample


def sample_batches(sample: SampleFn, n: int, seed: int, batch_size: int) -> np.ndarray:
    """``n`` images in batches of ``batch_size`` from one ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return np.concatenate([sample(min(batch_size, n - i), rng) for i in range(0, n, batch_size)])


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
