"""Convolutional VAE (Kingma & Welling 2014): encoder, decoder and the pure loss terms.

Images are in [-1, 1]. The encoder halves the side with stride-2 convs down to a small seed (see
:func:`imagegen.models.layers.conv_plan`) and outputs ``[z_mean, z_log_var]``; the decoder mirrors it
with stride-2 transposed convs, a conv to the image's channels (``to_image``, its output ``h``) and a tanh.
The trainer minimises ``reconstruction + beta * kl_divergence``, both summed per image, so they are on the
same per-image scale.

The reconstruction term is a likelihood of each pixel, chosen by ``vae.likelihood``:

- ``bernoulli`` (default): pixel brightness ``t = (x + 1) / 2`` under a Bernoulli of logit ``2h`` (the
  decoder's image ``tanh(h)`` is exactly ``2 sigmoid(2h) - 1``, its mean), taken from ``h`` itself
  (:func:`bernoulli_reconstruction_loss`). The gradient with respect to ``h`` is ``2 (sigmoid(2h) - t)``:
  it stays large wherever the output is wrong, however saturated the tanh.
- ``gaussian``: the sum of squared errors of the tanh output (a Gaussian of fixed variance 1/2). Its
  gradient with respect to ``h`` carries the factor ``1 - tanh(h)^2``, which vanishes once ``h`` is a few
  units from 0. On dark images (most pixels -1, a few bright strokes) the first steps push every output
  towards -1; with Adam's early full-size steps ``h`` overshoots deep into the tanh's flat tail, every
  gradient there is ~0, and the decoder stays black for good (samples all black, the reconstruction
  stuck at the all-black image's error). Kept to reproduce models trained with it.

Either way the decoder's image is ``tanh(h)``, so a model trained with either decodes the same way.

Against posterior collapse the KL term can be taken with *free bits* (Kingma et al. 2016, "Improved
variational inference with inverse autoregressive flow"): ``sum_d max(lambda, KL_d)`` with ``KL_d`` the
batch-mean KL of latent dimension ``d``, so a dimension carrying less than ``lambda`` nats is not pushed
further towards the prior (see :func:`free_bits_kl`).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from imagegen.config import VAEConfig
from imagegen.models.layers import conv_plan

MAX_WIDTH_MULT = 8


def _width(cfg: VAEConfig, level: int) -> int:
    """Filters of the conv at ``level`` (0 = the one next to the full-resolution image)."""
    return cfg.base_filters * min(2**level, MAX_WIDTH_MULT)


def build_encoder(cfg: VAEConfig, image_size: int, channels: int) -> keras.Model:
    """image (image_size, image_size, channels) -> [z_mean, z_log_var], each (latent_dim,), float32."""
    _, n_down = conv_plan(image_size, "vae")
    image = keras.Input(shape=(image_size, image_size, channels), name="image")
    h = image
    for i in range(n_down):
        h = layers.Conv2D(_width(cfg, i), 3, strides=2, padding="same", name=f"down{i}")(h)
        h = layers.LeakyReLU(0.2, name=f"down{i}_lrelu")(h)
    h = layers.Flatten(name="flatten")(h)
    z_mean = layers.Dense(cfg.latent_dim, dtype="float32", name="z_mean")(h)
    z_log_var = layers.Dense(cfg.latent_dim, dtype="float32", name="z_log_var")(h)
    return keras.Model(image, [z_mean, z_log_var], name="vae_encoder")


def build_decoder(cfg: VAEConfig, image_size: int, channels: int) -> keras.Model:
    """z (latent_dim,) -> image (image_size, image_size, channels) in [-1, 1], float32."""
    seed, n_up = conv_plan(image_size, "vae")
    z = keras.Input(shape=(cfg.latent_dim,), name="z")
    width = _width(cfg, n_up)
    h = layers.Dense(seed * seed * width, name="project")(z)
    h = layers.ReLU(name="project_relu")(h)
    h = layers.Reshape((seed, seed, width), name="seed")(h)
    for i in range(n_up):
        level = n_up - 1 - i
        h = layers.Conv2DTranspose(_width(cfg, level), 4, strides=2, padding="same", name=f"up{i}")(h)
        h = layers.ReLU(name=f"up{i}_relu")(h)
    h = layers.Conv2D(channels, 3, padding="same", name="to_image")(h)
    image = layers.Activation("tanh", dtype="float32", name="image")(h)
    return keras.Model(z, image, name="vae_decoder")


def decoder_logits(decoder: keras.Model) -> keras.Model:
    """z -> ``h``, the decoder's output before its tanh, float32: a model built from ``decoder``'s own layers,
    so it has the decoder's variables in the same order (a :class:`~imagegen.training.families.base.Family`
    view). The Bernoulli likelihood reads its logits from here, not from the saturating tanh output."""
    h = layers.Activation("linear", dtype="float32", name="logits")(decoder.get_layer("to_image").output)
    view = keras.Model(decoder.input, h, name="vae_decoder_logits")
    if [id(v) for v in view.trainable_variables] != [id(v) for v in decoder.trainable_variables]:
        raise AssertionError("decoder_logits: the view does not hold the decoder's variables in its order")
    return view


def reparameterize(z_mean: Any, z_log_var: Any, eps: Any) -> Any:
    """z = mean + exp(log_var / 2) * eps, with eps ~ N(0, I) drawn by the caller (same shape)."""
    return z_mean + ops.exp(0.5 * z_log_var) * ops.cast(eps, z_mean.dtype)


def reconstruction_loss(x: Any, x_hat: Any) -> Any:
    """Sum of squared errors over each image's pixels and channels, mean over the batch; scalar."""
    diff = ops.cast(x, "float32") - ops.cast(x_hat, "float32")
    per_image = ops.sum(ops.square(diff), axis=tuple(range(1, len(diff.shape))))
    return ops.mean(per_image)


def bernoulli_reconstruction_loss(x: Any, h: Any) -> Any:
    """Bernoulli negative log-likelihood of the brightness ``(x + 1) / 2`` under logits ``2h`` (``h``: the
    decoder's pre-tanh output), less its minimum (the targets' own entropy), summed over each image's pixels
    and channels and averaged over the batch; scalar, 0 for a perfect reconstruction.

    Written on logits (``softplus(l) - t l``), it is finite for any ``h`` and its gradient is ``2 (sigmoid(2h) - t)``.
    """
    t = (ops.cast(x, "float32") + 1.0) / 2.0
    t = ops.clip(t, 0.0, 1.0)
    logits = 2.0 * ops.cast(h, "float32")
    nll = ops.softplus(logits) - t * logits
    safe = ops.clip(t, 1e-7, 1.0 - 1e-7)
    entropy = -(t * ops.log(safe) + (1.0 - t) * ops.log(1.0 - safe))  # constant: no gradient reaches h
    per_image = ops.sum(nll - entropy, axis=tuple(range(1, len(nll.shape))))
    return ops.mean(per_image)


def kl_per_dim(z_mean: Any, z_log_var: Any) -> Any:
    """KL(N(mean, exp(log_var)) || N(0, 1)) of each latent dimension, mean over the batch; (latent_dim,)."""
    z_mean = ops.cast(z_mean, "float32")
    z_log_var = ops.cast(z_log_var, "float32")
    per_dim = -0.5 * (1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
    return ops.mean(per_dim, axis=0)


def kl_divergence(z_mean: Any, z_log_var: Any) -> Any:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over latent dims, mean over the batch; scalar."""
    return ops.sum(kl_per_dim(z_mean, z_log_var))


def free_bits_kl(per_dim: Any, free_bits: float) -> Any:
    """The KL term with free bits: ``sum_d max(free_bits, KL_d)``; equals the plain sum when ``free_bits`` is 0."""
    if free_bits <= 0:
        return ops.sum(per_dim)
    return ops.sum(ops.maximum(per_dim, free_bits))
