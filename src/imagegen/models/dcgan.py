"""DCGAN (Radford et al. 2016): transposed-conv generator, strided-conv discriminator, GAN losses.

Both networks are sized by :class:`imagegen.config.DCGANConfig` and the image shape. The generator
starts from a small seed (4x4 for power-of-two sides, see :func:`imagegen.models.layers.conv_plan`)
and doubles it with stride-2 transposed convs (BatchNorm + ReLU); the discriminator mirrors it with
stride-2 convs + LeakyReLU(0.2) and no normalisation (so real and fake batches may be fed
separately or concatenated). The conditional variants take an int label input of shape ():
the generator concatenates a label embedding to z, the discriminator uses a projection head
(Miyato & Koyama 2018): ``logit = w.h + embed(y).h``.

Outputs are float32 even under a mixed-precision policy.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from imagegen.config import DCGANConfig
from imagegen.models.layers import conv_plan

MAX_WIDTH_MULT = 8  # widths are capped at base_filters * 8 so 64x64 stays small


def _width(cfg: DCGANConfig, level: int) -> int:
    """Filters at ``level`` resamplings away from full resolution (level 0 = full resolution)."""
    return cfg.base_filters * min(2**level, MAX_WIDTH_MULT)


def build_generator(cfg: DCGANConfig, image_size: int, channels: int, num_classes: int) -> keras.Model:
    """z (latent_dim,) [+ label ()] -> image (image_size, image_size, channels) in [-1, 1], float32."""
    seed, n_up = conv_plan(image_size, "dcgan")
    z = keras.Input(shape=(cfg.latent_dim,), name="z")
    inputs: list[Any] = [z]
    h = z
    if cfg.conditional:
        label = keras.Input(shape=(), dtype="int32", name="label")
        inputs.append(label)
        emb = layers.Embedding(num_classes, cfg.latent_dim, name="label_embedding")(label)
        h = layers.Concatenate(name="z_and_label")([z, emb])

    width = _width(cfg, n_up)
    h = layers.Dense(seed * seed * width, use_bias=False, name="project")(h)
    h = layers.BatchNormalization(name="project_bn")(h)
    h = layers.ReLU(name="project_relu")(h)
    h = layers.Reshape((seed, seed, width), name="seed")(h)
    for i in range(n_up):
        level = n_up - 1 - i
        h = layers.Conv2DTranspose(_width(cfg, level), 4, strides=2, padding="same", use_bias=False, name=f"up{i}")(h)
        h = layers.BatchNormalization(name=f"up{i}_bn")(h)
        h = layers.ReLU(name=f"up{i}_relu")(h)
    h = layers.Conv2D(channels, 3, padding="same", name="to_image")(h)
    image = layers.Activation("tanh", dtype="float32", name="image")(h)
    return keras.Model(inputs if cfg.conditional else z, image, name="dcgan_generator")


def build_discriminator(cfg: DCGANConfig, image_size: int, channels: int, num_classes: int) -> keras.Model:
    """image [+ label ()] -> one real/fake logit per image, shape (1,), float32."""
    _, n_down = conv_plan(image_size, "dcgan")
    image = keras.Input(shape=(image_size, image_size, channels), name="image")
    inputs: list[Any] = [image]
    h = image
    for i in range(n_down):
        h = layers.Conv2D(_width(cfg, i), 4, strides=2, padding="same", name=f"down{i}")(h)
        h = layers.LeakyReLU(0.2, name=f"down{i}_lrelu")(h)
    features = layers.Flatten(name="features")(h)
    logit = layers.Dense(1, name="logit_linear")(features)
    if cfg.conditional:
        label = keras.Input(shape=(), dtype="int32", name="label")
        inputs.append(label)
        emb = layers.Embedding(num_classes, features.shape[-1], name="label_projection")(label)
        projection = layers.Dot(axes=1, name="projection")([emb, features])
        logit = layers.Add(name="logit_sum")([logit, projection])
    logit = layers.Activation("linear", dtype="float32", name="logit")(logit)
    return keras.Model(inputs if cfg.conditional else image, logit, name="dcgan_discriminator")


def discriminator_loss(real_logits: Any, fake_logits: Any) -> Any:
    """Binary cross-entropy of the discriminator: -log D(x) - log(1 - D(G(z))), batch means, scalar.

    Written with softplus on logits (``-log sigmoid(l) = softplus(-l)``), which is exact and stable.
    """
    real_logits = ops.cast(real_logits, "float32")
    fake_logits = ops.cast(fake_logits, "float32")
    return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))


def generator_loss(fake_logits: Any) -> Any:
    """Non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014), batch mean, scalar."""
    return ops.mean(ops.softplus(-ops.cast(fake_logits, "float32")))
