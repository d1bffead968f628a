"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN") with ADA's
differentiable augmentation (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data").

Generator: a mapping MLP z (and a label embedding) -> w with equalized learning rate and a learning-rate multiplier,
a learned constant input, modulated 3x3 convolutions with weight demodulation, per-pixel noise with learned
strengths, and toRGB outputs summed over resolutions (skip architecture). A moving average of w (``w_avg``, a
non-trainable weight) is tracked while training for truncation.

The modulated convolution is written as three builtin ops so that it exports to TFLite without custom kernels:
the input activations are scaled by the per-sample style ``s`` (B, C_in), one convolution with the shared weight
runs on the whole batch, and the output is multiplied per sample and output channel by
``rsqrt(sum_{taps, in} (w * s)^2 + eps) = rsqrt(s^2 @ sum_taps w^2 + eps)``. That equals the paper's grouped
convolution with one modulated, demodulated kernel per sample (see the tests), without per-sample kernels.

The noise of every layer comes in as one flat input (B, :func:`noise_size`) drawn on the host, so sampling and
training are deterministic and the exported graph takes it like ``z``; a missing noise input means zeros.

Discriminator: residual blocks (two 3x3 convs then 2x average pooling, plus a pooled 1x1 skip, summed times
1/sqrt(2)), a minibatch standard-deviation feature at the lowest resolution, and a projection head when
class-conditioned (``logit = w.h + embed(y).h``, Miyato & Koyama 2018).

Augmentation (:func:`augment`): integer translation (reflect padding), brightness, contrast, saturation and
cutout, each per image with parameters drawn on the host (:func:`draw_augment`) so the step itself is a
deterministic, differentiable function of its inputs.

Everything is ``keras.ops`` except :func:`value_and_input_gradient` (the R1 penalty's gradient with respect to
the discriminator's input), which needs the backend's own autodiff: ``keras.ops`` has no gradient.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from imagegen.models.layers import conv_plan

_PACKAGE = "imagegen"
SQRT2 = math.sqrt(2.0)


def lrelu(x: Any) -> Any:
    """Leaky ReLU (0.2) with StyleGAN's gain sqrt(2), which keeps unit-variance activations near unit variance."""
    return ops.leaky_relu(x, 0.2) * SQRT2


def normalize_2nd_moment(x: Any, eps: float = 1e-8) -> Any:
    return x * ops.rsqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + eps)


# --------------------------------------------------------------------------------------------------
# Layers with equalized learning rate


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EqualDense(layers.Layer):
    """Dense layer with equalized learning rate: weights drawn N(0, 1/lr_mul^2) and scaled at run time by
    ``lr_mul / sqrt(fan_in)``, bias scaled by ``lr_mul`` (so ``lr_multiplier`` slows this layer's learning)."""

    def __init__(
        self,
        units: int,
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
        activation: bool = False,
        use_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.lr_multiplier = float(lr_multiplier)
        self.bias_init = float(bias_init)
        self.activation = bool(activation)
        self.use_bias = bool(use_bias)

    def build(self, input_shape: tuple) -> None:
        fan_in = int(input_shape[-1])
        self.kernel = self.add_weight(
            shape=(fan_in, self.units),
            initializer=keras.initializers.RandomNormal(stddev=1.0 / self.lr_multiplier),
            name="kernel",
        )
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.units,),
                initializer=keras.initializers.Constant(self.bias_init / self.lr_multiplier),
                name="bias",
            )
        self.gain = self.lr_multiplier / math.sqrt(fan_in)

    def call(self, x: Any) -> Any:
        y = ops.matmul(x, self.kernel * self.gain)
        if self.use_bias:
            y = y + self.bias * self.lr_multiplier
        return lrelu(y) if self.activation else y

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "lr_multiplier": self.lr_multiplier,
            "bias_init": self.bias_init,
            "activation": self.activation,
            "use_bias": self.use_bias,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EqualConv2D(layers.Layer):
    """'same' convolution with equalized learning rate (weights N(0, 1) scaled by 1/sqrt(fan_in) at run time)."""

    def __init__(
        self, filters: int, kernel_size: int = 3, activation: bool = True, use_bias: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.activation = bool(activation)
        self.use_bias = bool(use_bias)

    def build(self, input_shape: tuple) -> None:
        fan_in = int(input_shape[-1]) * self.kernel_size**2
        k = self.kernel_size
        self.kernel = self.add_weight(
            shape=(k, k, int(input_shape[-1]), self.filters),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="kernel",
        )
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
        self.gain = 1.0 / math.sqrt(fan_in)

    def call(self, x: Any) -> Any:
        y = ops.conv(x, self.kernel * self.gain, padding="same")
        if self.use_bias:
            y = y + self.bias
        return lrelu(y) if self.activation else y

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "activation": self.activation,
            "use_bias": self.use_bias,
        }


# --------------------------------------------------------------------------------------------------
# Modulated convolution


def modulated_conv(x: Any, weight: Any, styles: Any, demodulate: bool = True, eps: float = 1e-8) -> Any:
    """Modulated (and demodulated) 'same' convolution of x (B, H, W, C_in) with ``weight`` (k, k, C_in, C_out)
    and per-sample ``styles`` (B, C_in): scale the input, one shared-weight conv, then scale each sample's output
    channels by ``rsqrt(sum over taps and inputs of (weight * style)^2 + eps)`` (see the module docstring)."""
    y = ops.conv(x * styles[:, None, None, :], weight, padding="same")
    if demodulate:
        energy = ops.sum(ops.square(weight), axis=(0, 1))  # (C_in, C_out)
        d = ops.rsqrt(ops.matmul(ops.square(styles), energy) + eps)  # (B, C_out)
        y = y * d[:, None, None, :]
    return y


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StyleConv(layers.Layer):
    """One synthesis layer: ``[x, w, noise]`` -> modulated conv, + noise * strength, + bias, leaky ReLU.

    ``demodulate=False``, ``activation=False`` and no noise give the toRGB layer (a 1x1 modulated conv)."""

    def __init__(
        self,
        filters: int,
        kernel_size: int = 3,
        demodulate: bool = True,
        activation: bool = True,
        use_noise: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.demodulate = bool(demodulate)
        self.activation = bool(activation)
        self.use_noise = bool(use_noise)

    def build(self, input_shape: Any) -> None:
        x_shape, w_shape = input_shape[0], input_shape[1]
        c_in = int(x_shape[-1])
        k = self.kernel_size
        self.affine = EqualDense(c_in, bias_init=1.0, name="affine")  # w -> style s, initially all ones
        self.affine.build(w_shape)
        self.kernel = self.add_weight(
            shape=(k, k, c_in, self.filters),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="kernel",
        )
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")
        if self.use_noise:
            self.noise_strength = self.add_weight(shape=(), initializer="zeros", name="noise_strength")
        self.gain = 1.0 / math.sqrt(c_in * k * k)

    def call(self, inputs: Any) -> Any:
        x, w = inputs[0], inputs[1]
        styles = self.affine(w)
        if not self.demodulate:  # toRGB: the style absorbs the weight gain (as the paper's weight_gain)
            styles = styles * self.gain
            y = modulated_conv(x, self.kernel, styles, demodulate=False)
        else:
            y = modulated_conv(x, self.kernel * self.gain, styles, demodulate=True)
        if self.use_noise and len(inputs) > 2 and inputs[2] is not None:
            y = y + inputs[2] * self.noise_strength
        y = y + self.bias
        return lrelu(y) if self.activation else y

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*input_shape[0][:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "demodulate": self.demodulate,
            "activation": self.activation,
            "use_noise": self.use_noise,
        }


# --------------------------------------------------------------------------------------------------
# Generator


def synthesis_plan(image_size: int) -> tuple[int, int]:
    """Side of the learned constant and the number of 2x upsampling blocks (the DCGAN's plan: 16 -> (4, 2))."""
    return conv_plan(image_size, "stylegan2")


def num_ws(image_size: int) -> int:
    """Style vectors one image takes: the constant's conv and toRGB, then two convs per block, plus the last toRGB
    (each block's toRGB shares the next layer's w, as in the paper)."""
    _, n_up = synthesis_plan(image_size)
    return 2 + 2 * n_up


def noise_sides(image_size: int) -> list[int]:
    """Side of each noise map, one per 3x3 synthesis layer, in the order of the flat noise input."""
    seed, n_up = synthesis_plan(image_size)
    return [seed] + [seed * 2**i for i in range(1, n_up + 1) for _ in range(2)]


def noise_size(image_size: int) -> int:
    """Entries of the flat per-image noise input: every layer's H x W map, concatenated."""
    return sum(side * side for side in noise_sides(image_size))


def channels_at(side: int, image_size: int, base_channels: int, max_channels: int) -> int:
    """Feature maps at resolution ``side``: ``base_channels`` at full resolution, doubling per halving, capped."""
    return min(max_channels, base_channels * (image_size // side))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StyleGAN2Generator(keras.Model):
    """z (latent_dim,) [+ label ()] [+ noise (noise_size,)] -> image (size, size, channels) in [-1, 1], float32.

    Called with a list ``[z, label?, noise?]`` (the serving order: what is exported), or with a dict with the keys
    ``z``, ``label``, ``noise`` and, for training and sampling, ``z_mix`` with ``mix`` (B, num_ws) 0/1 (style mixing:
    the layers where ``mix`` is 1 take the w of ``z_mix``) and ``truncation`` (B,) (w -> w_avg + t (w - w_avg)).
    With ``training=True`` the batch mean of w moves ``w_avg`` (decay ``w_avg_beta``).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        latent_dim: int,
        w_dim: int,
        mapping_layers: int,
        mapping_lr_multiplier: float,
        base_channels: int,
        max_channels: int,
        num_classes: int = 0,
        conditional: bool = False,
        w_avg_beta: float = 0.995,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("name", "stylegan2_generator")
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.image_channels = int(channels)
        self.latent_dim = int(latent_dim)
        self.w_dim = int(w_dim)
        self.mapping_layers = int(mapping_layers)
        self.mapping_lr_multiplier = float(mapping_lr_multiplier)
        self.base_channels = int(base_channels)
        self.max_channels = int(max_channels)
        self.num_classes = int(num_classes)
        self.conditional = bool(conditional)
        self.w_avg_beta = float(w_avg_beta)
        self.seed_side, self.n_up = synthesis_plan(self.image_size)
        self.num_ws = num_ws(self.image_size)
        self.noise_sides = noise_sides(self.image_size)

        def width(side: int) -> int:
            return channels_at(side, self.image_size, self.base_channels, self.max_channels)

        if self.conditional:
            self.label_embedding = layers.Embedding(self.num_classes, self.latent_dim, name="label_embedding")
        self.mapping = [
            EqualDense(self.w_dim, lr_multiplier=self.mapping_lr_multiplier, activation=True, name=f"mapping{i}")
            for i in range(self.mapping_layers)
        ]
        self.w_avg = self.add_weight(shape=(self.w_dim,), initializer="zeros", trainable=False, name="w_avg")
        self.const = self.add_weight(
            shape=(self.seed_side, self.seed_side, width(self.seed_side)),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            name="const",
        )
        self.convs = [StyleConv(width(self.seed_side), name="conv_seed")]
        self.to_rgbs = [
            StyleConv(self.image_channels, 1, demodulate=False, activation=False, use_noise=False, name="to_rgb_seed")
        ]
        for i in range(1, self.n_up + 1):
            side = self.seed_side * 2**i
            self.convs += [StyleConv(width(side), name=f"conv{side}_0"), StyleConv(width(side), name=f"conv{side}_1")]
            self.to_rgbs.append(
                StyleConv(
                    self.image_channels, 1, demodulate=False, activation=False, use_noise=False, name=f"to_rgb{side}"
                )
            )
        self.upsample = layers.UpSampling2D(2, interpolation="bilinear", name="upsample")

    # ---------------------------------------------------------------------------------------------
    def map(self, z: Any, label: Any = None) -> Any:
        """z [+ label] -> w (B, w_dim)."""
        x = normalize_2nd_moment(ops.cast(z, "float32"))
        if self.conditional:
            emb = normalize_2nd_moment(self.label_embedding(ops.cast(label, "int32")))
            x = ops.concatenate([x, emb], axis=-1)
        for layer in self.mapping:
            x = layer(x)
        return x

    def synthesize(self, ws: Any, noise: Any = None) -> Any:
        """ws (B, num_ws, w_dim) [+ flat noise (B, noise_size)] -> image."""
        batch = ops.shape(ws)[0]
        maps: list[Any] = [None] * len(self.noise_sides)
        if noise is not None:
            noise = ops.cast(noise, "float32")
            start = 0
            for i, side in enumerate(self.noise_sides):
                maps[i] = ops.reshape(noise[:, start : start + side * side], (-1, side, side, 1))
                start += side * side
        x = ops.broadcast_to(self.const[None], (batch, *self.const.shape))
        x = self.convs[0]([x, ws[:, 0], maps[0]])
        rgb = self.to_rgbs[0]([x, ws[:, 1]])
        for i in range(1, self.n_up + 1):
            x = self.upsample(x)
            x = self.convs[2 * i - 1]([x, ws[:, 2 * i - 1], maps[2 * i - 1]])
            x = self.convs[2 * i]([x, ws[:, 2 * i], maps[2 * i]])
            rgb = self.upsample(rgb) + self.to_rgbs[i]([x, ws[:, 2 * i + 1]])
        return ops.cast(ops.tanh(rgb), "float32")

    def _parse(self, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, dict):
            return inputs
        if not isinstance(inputs, list | tuple):
            return {"z": inputs}
        names = ["z", "label", "noise"] if self.conditional else ["z", "noise"]
        return dict(zip(names, inputs, strict=False))

    def call(self, inputs: Any, training: bool = False) -> Any:
        given = self._parse(inputs)
        label = given.get("label")
        w = self.map(given["z"], label)
        if training:  # w_avg <- lerp(mean w, w_avg, beta)
            self.w_avg.assign(ops.mean(w, axis=0) + self.w_avg_beta * (self.w_avg - ops.mean(w, axis=0)))
        ws = ops.repeat(w[:, None, :], self.num_ws, axis=1)
        if given.get("z_mix") is not None:
            w_mix = self.map(given["z_mix"], label)
            mix = ops.cast(given["mix"], "float32")[:, :, None]
            ws = ws * (1.0 - mix) + w_mix[:, None, :] * mix
        if given.get("truncation") is not None:
            truncation = ops.cast(given["truncation"], "float32")[:, None, None]
            ws = self.w_avg + truncation * (ws - self.w_avg)
        return self.synthesize(ws, given.get("noise"))

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_size": self.image_size,
            "channels": self.image_channels,
            "latent_dim": self.latent_dim,
            "w_dim": self.w_dim,
            "mapping_layers": self.mapping_layers,
            "mapping_lr_multiplier": self.mapping_lr_multiplier,
            "base_channels": self.base_channels,
            "max_channels": self.max_channels,
            "num_classes": self.num_classes,
            "conditional": self.conditional,
            "w_avg_beta": self.w_avg_beta,
        }


# --------------------------------------------------------------------------------------------------
# Discriminator


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MinibatchStdDev(layers.Layer):
    """Appends one feature map: the standard deviation over groups of ``group_size`` images (averaged over
    positions and channels), so the discriminator sees the variety of a batch (Karras et al. 2018)."""

    def __init__(self, group_size: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group_size = int(group_size)

    def call(self, x: Any) -> Any:
        batch = x.shape[0]
        group = self.group_size if batch is None else math.gcd(int(batch), self.group_size)
        _, h, w, c = x.shape
        y = ops.reshape(x, (group, -1, h, w, c))
        y = y - ops.mean(y, axis=0, keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(y), axis=0) + 1e-8)  # (M, H, W, C)
        std = ops.mean(std, axis=(1, 2, 3))  # (M,)
        std = ops.tile(std, (group,))  # image b = g * M + m gets its group's value
        feature = ops.ones_like(x[..., :1]) * std[:, None, None, None]
        return ops.concatenate([x, feature], axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], input_shape[-1] + 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "group_size": self.group_size}


def build_discriminator(
    image_size: int,
    channels: int,
    base_channels: int,
    max_channels: int,
    num_classes: int = 0,
    conditional: bool = False,
    mbstd_group: int = 4,
) -> keras.Model:
    """image [+ label ()] -> one real/fake logit per image, shape (1,), float32 (residual architecture)."""
    seed, n_down = synthesis_plan(image_size)

    def width(side: int) -> int:
        return channels_at(side, image_size, base_channels, max_channels)

    image = keras.Input(shape=(image_size, image_size, channels), name="image")
    inputs: list[Any] = [image]
    h = EqualConv2D(width(image_size), 1, name="from_rgb")(image)
    side = image_size
    for _ in range(n_down):
        out = width(side // 2)
        skip = layers.AveragePooling2D(2, name=f"skip_pool{side}")(h)
        skip = EqualConv2D(out, 1, activation=False, use_bias=False, name=f"skip{side}")(skip)
        h = EqualConv2D(width(side), 3, name=f"conv{side}_0")(h)
        h = EqualConv2D(out, 3, name=f"conv{side}_1")(h)
        h = layers.AveragePooling2D(2, name=f"pool{side}")(h)
        h = layers.Add(name=f"residual{side}")([h, skip])
        h = layers.Rescaling(1.0 / SQRT2, name=f"residual{side}_scale")(h)
        side //= 2
    h = MinibatchStdDev(mbstd_group, name="minibatch_std")(h)
    h = EqualConv2D(width(seed), 3, name="conv_final")(h)
    h = layers.Flatten(name="flatten")(h)
    features = EqualDense(width(seed), activation=True, name="features")(h)
    logit = EqualDense(1, name="logit_linear")(features)
    if conditional:
        label = keras.Input(shape=(), dtype="int32", name="label")
        inputs.append(label)
        emb = layers.Embedding(num_classes, width(seed), name="label_projection")(label)
        projection = layers.Dot(axes=1, name="projection")([emb, features])
        logit = layers.Add(name="logit_sum")([logit, projection])
    logit = layers.Activation("linear", dtype="float32", name="logit")(logit)
    return keras.Model(inputs if conditional else image, logit, name="stylegan2_discriminator")


# --------------------------------------------------------------------------------------------------
# Losses and regularisation


def discriminator_loss(real_logits: Any, fake_logits: Any) -> Any:
    """Logistic loss of the discriminator: softplus(-D(x)) + softplus(D(G(z))), batch means."""
    real_logits = ops.cast(real_logits, "float32")
    fake_logits = ops.cast(fake_logits, "float32")
    return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))


def generator_loss(fake_logits: Any) -> Any:
    """Non-saturating logistic loss of the generator: softplus(-D(G(z))), batch mean."""
    return ops.mean(ops.softplus(-ops.cast(fake_logits, "float32")))


def value_and_input_gradient(fn: Any, x: Any) -> tuple[Any, Any]:
    """``fn(x)`` and the gradient of its sum with respect to ``x``, differentiable again (for R1's weight update).

    The one backend-specific function here: TensorFlow records it on a nested GradientTape, JAX takes
    ``jax.value_and_grad``; the training step differentiates the result a second time."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            total = tf.reduce_sum(tf.cast(y, tf.float32))
        return y, tape.gradient(total, x)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def total(v: Any) -> tuple[Any, Any]:
            y = fn(v)
            return jnp.sum(y.astype(jnp.float32)), y

        (_, y), grad = jax.value_and_grad(total, has_aux=True)(x)
        return y, grad
    raise NotImplementedError(f"R1 regularisation needs the tensorflow or jax backend, not {backend!r}")


def r1_penalty(gradient: Any) -> Any:
    """Per-image squared norm of the discriminator's gradient at the real images, ||grad D(x)||^2 (B,)."""
    g = ops.cast(gradient, "float32")
    return ops.sum(ops.square(g), axis=tuple(range(1, len(g.shape))))


# --------------------------------------------------------------------------------------------------
# Adaptive discriminator augmentation

AUGMENT_KEYS = ("shift_rows", "shift_cols", "brightness", "contrast", "saturation", "cutout")


def augment(x: Any, aug: dict[str, Any]) -> Any:
    """Augment a batch (B, H, W, C) with per-image parameters from :func:`draw_augment` (identity where an
    augmentation was not drawn): translation as two shift matrices (B, H, H) and (B, W, W), brightness (B,) added,
    contrast (B,) scaling around each image's mean, saturation (B,) scaling around each pixel's grey, cutout mask
    (B, H, W, 1) multiplied. Every step is linear in x, so gradients flow to the generator."""
    x = ops.cast(x, "float32")
    x = ops.einsum("bij,bjwc->biwc", aug["shift_rows"], x)
    x = ops.einsum("bkw,bhwc->bhkc", aug["shift_cols"], x)
    x = x + aug["brightness"][:, None, None, None]
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * aug["contrast"][:, None, None, None] + mean
    if x.shape[-1] > 1:
        grey = ops.mean(x, axis=-1, keepdims=True)
        x = grey + (x - grey) * aug["saturation"][:, None, None, None]
    return x * aug["cutout"]


def _shift_matrices(shifts: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size) 0/1 matrices M with (M @ v)[i] = v[reflect(i - shift)]: integer translation, reflect-padded."""
    n = shifts.shape[0]
    src = np.arange(size)[None, :] - shifts[:, None]  # (n, size): source index of each output index
    period = 2 * (size - 1) if size > 1 else 1
    src = np.mod(src, period)
    src = np.where(src >= size, period - src, src)
    out = np.zeros((n, size, size), np.float32)
    out[np.arange(n)[:, None], np.arange(size)[None, :], src] = 1.0
    return out


def draw_augment(rng: np.random.Generator, n: int, size: int, p: float) -> dict[str, np.ndarray]:
    """Host-side draws for :func:`augment`: each augmentation applies to each image with probability ``p``.

    Every draw is made whatever ``p`` is (the decision compares a uniform with ``p``), so the generator's stream
    does not depend on ``p``. Parameters follow ADA: translation up to 1/8 of the side, brightness N(0, 0.2),
    contrast 2^N(0, 0.5), saturation 2^N(0, 1), cutout of a square half the side at a uniform centre.
    """
    apply = rng.uniform(size=(n, 5)) < p
    max_shift = max(1, round(size / 8))
    shifts = rng.integers(-max_shift, max_shift + 1, size=(n, 2)) * apply[:, :1]
    brightness = rng.normal(0.0, 0.2, size=n) * apply[:, 1]
    contrast = np.where(apply[:, 2], np.exp2(rng.normal(0.0, 0.5, size=n)), 1.0)
    saturation = np.where(apply[:, 3], np.exp2(rng.normal(0.0, 1.0, size=n)), 1.0)
    centre = rng.uniform(size=(n, 2))
    coords = (np.arange(size) + 0.5) / size
    inside_r = np.abs(coords[None, :] - centre[:, :1]) < 0.25  # (n, H)
    inside_c = np.abs(coords[None, :] - centre[:, 1:]) < 0.25  # (n, W)
    hole = inside_r[:, :, None] & inside_c[:, None, :] & apply[:, 4, None, None]
    return {
        "shift_rows": _shift_matrices(shifts[:, 0], size),
        "shift_cols": _shift_matrices(shifts[:, 1], size),
        "brightness": brightness.astype(np.float32),
        "contrast": contrast.astype(np.float32),
        "saturation": saturation.astype(np.float32),
        "cutout": (~hole).astype(np.float32)[..., None],
    }


def ada_update(p: float, r_t: float, target: float, images: int, speed_images: float) -> float:
    """ADA's probability update: p + sign(r_t - target) * images / speed_images, clipped to [0, 1], where r_t is
    E[sign(D(real))] over the last ``images`` real images and ``speed_images`` is how many images it takes p to
    go from 0 to 1."""
    return float(np.clip(p + np.sign(r_t - target) * images / speed_images, 0.0, 1.0))
