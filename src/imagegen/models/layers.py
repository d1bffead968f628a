"""Building blocks shared by the models: time embedding, residual / attention blocks, resampling.

Everything here is Keras 3 with ``keras.ops`` only, so it runs on every backend, and every layer is
registered and implements ``get_config`` so that ``model.save(...)`` / ``keras.models.load_model``
round-trip without ``custom_objects``.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import layers, ops

from imagegen.errors import ConfigError

_PACKAGE = "imagegen"


def conv_plan(image_size: int, family: str) -> tuple[int, int]:
    """Seed side and number of 2x resamplings for the conv stacks of the DCGAN and the VAE.

    The image side is halved while it stays even and the half is at least 4, so 16 -> (4, 2),
    32 -> (4, 3), 64 -> (4, 4), 8 -> (4, 1), 28 -> (7, 2). Sides that are not a multiple of 4 (or
    smaller than 8) are refused, naming the size.
    """
    if image_size < 8 or image_size % 4:
        raise ConfigError(
            f"{family}: image_size={image_size} is not supported; "
            "expected a multiple of 4 of at least 8 (e.g. 8, 16, 28, 32, 64)"
        )
    seed, n = image_size, 0
    while seed % 2 == 0 and seed // 2 >= 4:
        seed //= 2
        n += 1
    return seed, n


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SinusoidalEmbedding(layers.Layer):
    """Transformer-style sinusoidal embedding of a (possibly fractional) timestep, (B,) -> (B, dim).

    Computed in float32 whatever the global dtype policy: with bfloat16 a timestep such as 999 would
    be rounded to 1000 before the sines are even taken.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if dim < 2:
            raise ValueError(f"SinusoidalEmbedding: dim must be >= 2, got {dim}")
        self.dim = int(dim)
        self.max_period = float(max_period)

    def call(self, t: Any) -> Any:
        half = self.dim // 2
        exponent = -math.log(self.max_period) * ops.arange(half, dtype="float32") / half
        freqs = ops.exp(exponent)
        args = ops.expand_dims(ops.cast(t, "float32"), -1) * ops.expand_dims(freqs, 0)
        emb = ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)
        if self.dim % 2:
            emb = ops.pad(emb, [[0, 0], [0, 1]])
        return emb

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape, self.dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "max_period": self.max_period}


def _group_moments(x: Any, groups: int) -> tuple[Any, Any]:
    """E[x] and E[x^2] of each (image, group) of float32 x (B, ..., C), each as (B, C).

    One contiguous NHWC reduction gives E[x] and E[x^2] per (image, channel); the groups are averaged on that
    small (B, C) tensor and broadcast back to its channels."""
    spatial = tuple(range(1, len(x.shape) - 1))
    channels = int(x.shape[-1])
    per_group = channels // groups
    moments = ops.stack([ops.mean(x, axis=spatial), ops.mean(ops.square(x), axis=spatial)])  # (2, B, C)
    moments = ops.mean(ops.reshape(moments, (2, -1, groups, per_group)), axis=-1, keepdims=True)
    moments = ops.reshape(moments * ops.ones((1, 1, 1, per_group)), (2, -1, channels))  # back to (2, B, C)
    return moments[0], moments[1]


def _per_image_channel(v: Any, rank: int) -> Any:
    """(B, C) -> (B, 1, ..., 1, C) to broadcast over the spatial axes of a rank-``rank`` tensor."""
    for _ in range(rank - 2):
        v = ops.expand_dims(v, 1)
    return v


def _sum_over_groups(v: Any, groups: int) -> Any:
    """(B, C) -> (B, C): each channel gets the sum of its group's channels."""
    channels = int(v.shape[-1])
    per_group = channels // groups
    summed = ops.sum(ops.reshape(v, (-1, groups, per_group)), axis=-1, keepdims=True)
    return ops.reshape(summed * ops.ones((1, 1, per_group)), (-1, channels))


def group_norm(x: Any, gamma: Any, beta: Any, *, groups: int, epsilon: float, silu: bool) -> Any:
    """Group normalisation of float32 x (B, ..., C) over its groups of channels, then ``gamma`` and ``beta``
    (C,), and SiLU when ``silu``; with a hand-written gradient.

    Forward: per-(image, channel) moments (:func:`_group_moments`), one multiply-add with a per-(image,
    channel) scale ``a`` and shift ``b``, and ``z * sigmoid(z)``. The variance E[x^2] - E[x]^2 is clamped at 0;
    it loses digits only where a group's |mean| is many times its standard deviation, which these networks'
    activations are not.

    Backward, written out rather than left to automatic differentiation (which differentiates the moments,
    the broadcasts and SiLU op by op, re-taking the sigmoid): with ``S1 = sum dz`` and ``S2 = sum dz * x`` over
    the spatial axes per (image, channel), ``dx = a * dz + k1 * x + k0`` with per-(image, group) ``k1``, ``k0``
    computed on (B, C) tensors, ``dgamma = sum_b rstd * (S2 - mean * S1)`` and ``dbeta = sum_b S1``; SiLU's
    ``dz = dy * sig * (1 + z - y)`` reuses the forward's sigmoid and output. The full-size passes of the
    backward fall from about 15 to 11: on a CPU, a small U-Net's train step spends much of its time in such
    element-wise passes (``docs/design.md``, where the train step's time goes)."""
    rank = len(x.shape)
    spatial = tuple(range(1, rank - 1))
    count = math.prod(int(x.shape[axis]) for axis in spatial) * (int(x.shape[-1]) // groups)  # per (image, group)

    @ops.custom_gradient
    def forward(x: Any, gamma: Any, beta: Any) -> Any:
        mean, mean_sq = _group_moments(x, groups)
        rstd = ops.rsqrt(ops.maximum(mean_sq - ops.square(mean), 0.0) + epsilon)
        a = rstd * gamma
        b = beta - mean * a
        a_map = _per_image_channel(a, rank)
        z = x * a_map + _per_image_channel(b, rank)
        if silu:
            sig = ops.sigmoid(z)
            y = z * sig
        else:
            y = z

        def grad(*args: Any, upstream: Any = None) -> tuple[Any, Any, Any]:
            dy = args[0] if upstream is None else upstream
            dz = dy * (sig * ((z - y) + 1.0)) if silu else dy
            s1 = ops.sum(dz, axis=spatial)  # (B, C)
            s2 = ops.sum(dz * x, axis=spatial)
            centred = s2 - mean * s1  # sum dz * (x - mean), per (image, channel)
            p = _sum_over_groups(gamma * centred, groups)  # (B, C), constant within a group
            q = _sum_over_groups(gamma * s1, groups)
            k1 = -(rstd * rstd * rstd) * p / count
            k0 = -k1 * mean - rstd * q / count
            dx = dz * a_map + (x * _per_image_channel(k1, rank) + _per_image_channel(k0, rank))
            return dx, ops.sum(rstd * centred, axis=0), ops.sum(s1, axis=0)

        return y, grad

    return forward(x, gamma, beta)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GroupNormalization(layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` over the channels of (B, ..., C), optionally followed by SiLU.

    The same weights (``gamma``, ``beta``) and the same result to float32 rounding, at a fraction of the cost
    where it matters (:func:`group_norm`). It keeps Keras' class name on purpose: a weight file addresses a layer
    of a functional model by its class name (``layers/group_normalization``), so models saved before still load.

    Keras reshapes to (B, H, W, G, C/G) and reduces three non-adjacent axes twice (the mean, then the squared
    deviation); TensorFlow's CPU kernels and the TFLite interpreter run that slowly: it was half of the default
    DDPM train step in graph mode. ``silu=True`` applies SiLU inside, so that the gradient of both is one
    hand-written pass (:func:`group_norm`); it computes what ``ops.silu(norm(x))`` computes.
    """

    def __init__(self, *args: Any, silu: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.silu = bool(silu)

    def call(self, inputs: Any) -> Any:
        if self.axis not in (-1, len(inputs.shape) - 1):
            raise ValueError(f"GroupNormalization normalises the last axis (channels last), got axis={self.axis}")
        x = ops.cast(inputs, "float32")  # as Keras: GN overflows in float16/bfloat16
        channels = int(x.shape[-1])
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        y = group_norm(x, gamma, beta, groups=self.groups, epsilon=self.epsilon, silu=self.silu)
        return ops.cast(y, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "silu": self.silu}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResBlock(layers.Layer):
    """Residual block of the DDPM U-Net: GN-SiLU-Conv, + projected time embedding, GN-SiLU-Dropout-Conv.

    Called on ``[x, temb]`` with x (B, H, W, C_in) and temb (B, D); returns (B, H, W, channels). The
    skip path is a 1x1 conv when C_in != channels.
    """

    def __init__(self, channels: int, groups: int = 8, dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.groups = int(groups)
        self.dropout = float(dropout)
        self.norm1 = GroupNormalization(groups=self.groups, epsilon=1e-5, silu=True, name="norm1")
        self.conv1 = layers.Conv2D(self.channels, 3, padding="same", name="conv1")
        self.temb_proj = layers.Dense(self.channels, name="temb_proj")
        self.norm2 = GroupNormalization(groups=self.groups, epsilon=1e-5, silu=True, name="norm2")
        self.drop = layers.Dropout(self.dropout, name="dropout")
        self.conv2 = layers.Conv2D(self.channels, 3, padding="same", name="conv2")
        self.skip: layers.Layer | None = None

    def build(self, input_shape: list[tuple]) -> None:
        x_shape, temb_shape = input_shape
        in_channels = x_shape[-1]
        if in_channels % self.groups:
            raise ConfigError(f"ResBlock: groups={self.groups} does not divide {in_channels} channels")
        out_shape = (*x_shape[:-1], self.channels)
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        self.temb_proj.build(temb_shape)
        self.norm2.build(out_shape)
        self.conv2.build(out_shape)
        if in_channels != self.channels:
            self.skip = layers.Conv2D(self.channels, 1, name="skip")
            self.skip.build(x_shape)
        self.built = True

    def call(self, inputs: list[Any], training: bool | None = None) -> Any:
        x, temb = inputs
        h = self.conv1(self.norm1(x))  # GroupNorm + SiLU
        t = self.temb_proj(ops.silu(temb))
        h = h + ops.expand_dims(ops.expand_dims(t, 1), 1)
        h = self.drop(self.norm2(h), training=training)  # GroupNorm + SiLU
        h = self.conv2(h)
        skip = self.skip(x) if self.skip is not None else x
        return skip + h

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return (*input_shape[0][:-1], self.channels)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "channels": self.channels,
            "groups": self.groups,
            "dropout": self.dropout,
        }


def project_rows(rows: Any, dense: layers.Layer, start: int, width: int) -> Any:
    """Output units ``start:start + width`` of the built ``dense`` layer applied to ``rows`` (N, C_in): the
    matrix product with that slice of its kernel plus its bias, in the rows' dtype.

    The attention blocks call their projections this way, on the (B*H*W, C) rows of a feature map, instead of
    calling the ``Dense`` layers on the 4-D map: on a 2-D input TensorFlow fuses the product with its bias add,
    and a slice of the kernel replaces splitting the activations of a joint q/k/v product."""
    kernel = ops.cast(dense.kernel[:, start : start + width], rows.dtype)
    return ops.matmul(rows, kernel) + ops.cast(dense.bias[start : start + width], rows.dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionBlock(layers.Layer):
    """Single-head spatial self-attention with a residual connection, (B, H, W, C) -> same shape.

    The attention logits and softmax are taken in float32 so that bf16 training stays stable.

    The projections keep Keras ``Dense`` weights (``qkv``: C -> 3C, ``proj``: C -> C, so saved models load as
    before) but are computed on the (B*H*W, C) rows by :func:`project_rows`, q, k and v each from its slice of
    the ``qkv`` kernel.
    """

    def __init__(self, groups: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = int(groups)
        self.norm = GroupNormalization(groups=self.groups, epsilon=1e-5, name="norm")
        self.qkv: layers.Layer | None = None
        self.proj: layers.Layer | None = None

    def build(self, input_shape: tuple) -> None:
        channels = input_shape[-1]
        self.norm.build(input_shape)
        self.qkv = layers.Dense(3 * channels, name="qkv")
        self.qkv.build(input_shape)
        self.proj = layers.Dense(channels, name="proj")
        self.proj.build(input_shape)
        self.built = True

    def call(self, x: Any) -> Any:
        _, height, width, channels = x.shape
        rows = ops.cast(ops.reshape(self.norm(x), (-1, channels)), self.compute_dtype)
        q, k, v = (
            ops.reshape(project_rows(rows, self.qkv, i * channels, channels), (-1, height * width, channels))
            for i in range(3)
        )
        # Scaled before the product: the queries hold C values per position, the logits one per pair of positions
        # (256 on a 16x16 map against C = 32-64), so the multiply touches a fraction of the values.
        q = ops.cast(q, "float32") * (1.0 / math.sqrt(channels))
        logits = ops.einsum("bic,bjc->bij", q, ops.cast(k, "float32"))
        weights = ops.softmax(logits, axis=-1)
        h = ops.einsum("bij,bjc->bic", ops.cast(weights, v.dtype), v)
        h = project_rows(ops.reshape(h, (-1, channels)), self.proj, 0, channels)
        return x + ops.reshape(h, (-1, height, width, channels))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Downsample(layers.Layer):
    """Halve the spatial side with a stride-2 3x3 conv."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.conv = layers.Conv2D(self.channels, 3, strides=2, padding="same", name="conv")

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)
        self.built = True

    def call(self, x: Any) -> Any:
        return self.conv(x)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return self.conv.compute_output_shape(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Upsample(layers.Layer):
    """Double the spatial side: nearest-neighbour upsampling then a 3x3 conv (no checkerboard)."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.up = layers.UpSampling2D(2, interpolation="nearest", name="up")
        self.conv = layers.Conv2D(self.channels, 3, padding="same", name="conv")

    def build(self, input_shape: tuple) -> None:
        batch, height, width, channels = input_shape
        up_shape = (
            batch,
            None if height is None else 2 * height,
            None if width is None else 2 * width,
            channels,
        )
        self.conv.build(up_shape)
        self.built = True

    def call(self, x: Any) -> Any:
        return self.conv(self.up(x))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        batch, height, width, _ = input_shape
        return (
            batch,
            None if height is None else 2 * height,
            None if width is None else 2 * width,
            self.channels,
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CrossAttentionBlock(layers.Layer):
    """Image features attend to a caption's token features (multi-head, residual), (B, H, W, C) -> same shape.

    Called on ``[x, context, mask]``: x (B, H, W, C), context (B, L, D) from the text encoder, mask (B, L)
    1.0 for real tokens and 0.0 for padding. Padded tokens get a large negative logit (finite, so the
    all-pad null caption gives a uniform average rather than NaN). Logits and softmax in float32. The
    output projection starts at zero, so the block starts as the identity. The queries and the output are
    projected on the image's rows (:func:`project_rows`), the keys and values by calling ``kv`` on the context.
    """

    def __init__(self, groups: int = 8, heads: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = int(groups)
        self.heads = int(heads)
        self.norm = GroupNormalization(groups=self.groups, epsilon=1e-5, name="norm")
        self.q: layers.Layer | None = None
        self.kv: layers.Layer | None = None
        self.proj: layers.Layer | None = None

    def build(self, input_shape: list[tuple]) -> None:
        x_shape, context_shape, _ = input_shape
        channels = x_shape[-1]
        if channels % self.heads:
            raise ConfigError(f"CrossAttentionBlock: heads={self.heads} does not divide {channels} channels")
        self.norm.build(x_shape)
        self.q = layers.Dense(channels, name="q")
        self.q.build(x_shape)
        self.kv = layers.Dense(2 * channels, name="kv")
        self.kv.build(context_shape)
        self.proj = layers.Dense(channels, kernel_initializer="zeros", name="proj")
        self.proj.build(x_shape)
        self.built = True

    def call(self, inputs: list[Any]) -> Any:
        x, context, mask = inputs
        _, height, width, channels = x.shape
        length = context.shape[1]
        head_dim = channels // self.heads
        rows = ops.cast(ops.reshape(self.norm(x), (-1, channels)), self.compute_dtype)
        q = ops.reshape(project_rows(rows, self.q, 0, channels), (-1, height * width, self.heads, head_dim))
        k, v = ops.split(self.kv(context), 2, axis=-1)
        k = ops.reshape(k, (-1, length, self.heads, head_dim))
        v = ops.reshape(v, (-1, length, self.heads, head_dim))
        q = ops.cast(q, "float32") * (1.0 / math.sqrt(head_dim))  # scaled before the product, as self-attention's
        logits = ops.einsum("bihc,bjhc->bhij", q, ops.cast(k, "float32"))
        bias = (1.0 - ops.cast(mask, "float32")) * -1e9
        logits = logits + ops.expand_dims(ops.expand_dims(bias, 1), 1)
        weights = ops.softmax(logits, axis=-1)
        h = ops.einsum("bhij,bjhc->bihc", ops.cast(weights, v.dtype), v)
        h = project_rows(ops.reshape(h, (-1, channels)), self.proj, 0, channels)
        return x + ops.reshape(h, (-1, height, width, channels))

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups, "heads": self.heads}
