"""The DDPM noise-prediction U-Net (Ho et al. 2020), small by default.

Inputs, in this order (also addressable by name):

* ``x_t``   (H, W, C) float: the noisy image,
* ``t``     () float32: the timestep index in [0, T) (ints are accepted and cast; fractional values
  are allowed, e.g. for distillation),
* ``label`` () int32, only when ``cfg.conditional``: a class in [0, num_classes), or ``num_classes``
  for "no label" (the null token of classifier-free guidance), hence num_classes + 1 embedding rows.
* ``tokens`` (L,) int32, only when ``cfg.captions``: a caption's token ids (:mod:`imagegen.models.text`), all
  ``<pad>`` (0) for the null caption of classifier-free guidance.

Output: the predicted noise epsilon, same shape as ``x_t``, float32.

Layout: a 3x3 stem conv (width ``base_channels * channel_mults[0]``), then ``len(cfg.channel_mults)``
levels of ``cfg.num_res_blocks`` residual blocks (width ``base_channels * mult``) with a stride-2
downsample between levels, a middle ResBlock-Attention-ResBlock, and the mirrored decoder with
``num_res_blocks + 1`` blocks per level
fed by the skip connections. Self-attention follows every block whose feature maps have a side in
``cfg.attention_resolutions`` (sides never reached are simply unused). The timestep goes through a
sinusoidal embedding and a 2-layer MLP (width 4 * base_channels) and is added inside every block;
a class embedding is added to it in the conditional model. The final conv is zero-initialised, so
an untrained model predicts eps = 0.

Caption model: the tokens go through the text encoder (a nested model named ``text_encoder``, trained with the
U-Net and so also averaged into its EMA copy); a summary of its token features (``cfg.text_pooling``: the last
real token's, or their mean) is added to the time embedding, and cross-attention to the token features follows
every block whose side is in ``cfg.cross_attention_resolutions`` and the middle self-attention.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from imagegen.config import DDPMConfig
from imagegen.errors import ConfigError
from imagegen.models.layers import (
    AttentionBlock,
    CrossAttentionBlock,
    Downsample,
    GroupNormalization,
    ResBlock,
    SinusoidalEmbedding,
    Upsample,
)
from imagegen.models.text import POOLS, build_text_encoder


def check_image_size(cfg: DDPMConfig, image_size: int) -> None:
    """Raise ConfigError unless image_size survives len(channel_mults) - 1 halvings exactly."""
    n_down = len(cfg.channel_mults) - 1
    if image_size < 1 or image_size % (2**n_down):
        raise ConfigError(
            f"ddpm: image_size={image_size} is not divisible by 2**{n_down}={2**n_down} "
            f"(channel_mults={cfg.channel_mults} means {n_down} downsamplings)"
        )


def build_unet(cfg: DDPMConfig, image_size: int, channels: int, num_classes: int) -> keras.Model:
    """Build the epsilon-prediction U-Net; see the module docstring for its inputs and layout."""
    check_image_size(cfg, image_size)
    base = cfg.base_channels
    temb_dim = 4 * base
    attention = set(cfg.attention_resolutions)
    captions = bool(getattr(cfg, "captions", False))
    cross = set(cfg.cross_attention_resolutions) if captions else set()
    text: list[Any] = []  # [context, mask] of the caption model

    x_t = keras.Input(shape=(image_size, image_size, channels), name="x_t")
    t = keras.Input(shape=(), dtype="float32", name="t")
    inputs: list[Any] = [x_t, t]

    temb = SinusoidalEmbedding(base, name="time_sinusoid")(t)
    temb = layers.Dense(temb_dim, activation="silu", name="time_mlp1")(temb)
    temb = layers.Dense(temb_dim, name="time_mlp2")(temb)
    if cfg.conditional:
        label = keras.Input(shape=(), dtype="int32", name="label")
        inputs.append(label)
        lemb = layers.Embedding(num_classes + 1, temb_dim, name="label_embedding")(label)
        temb = layers.Add(name="time_and_label")([temb, lemb])
    if captions:
        tokens = keras.Input(shape=(cfg.text_max_length,), dtype="int32", name="tokens")
        inputs.append(tokens)
        text = list(text_encoder(cfg)(tokens))
        pool = POOLS[getattr(cfg, "text_pooling", "mean")](name="caption_pool")
        pooled = layers.Dense(temb_dim, name="caption_proj")(pool(text))
        temb = layers.Add(name="time_and_caption")([temb, pooled])

    def block(h: Any, width: int, side: int, name: str) -> Any:
        h = ResBlock(width, cfg.groups, cfg.dropout, name=f"{name}_res")([h, temb])
        if side in attention:
            h = AttentionBlock(cfg.groups, name=f"{name}_attn")(h)
        if side in cross:
            h = CrossAttentionBlock(cfg.groups, cfg.text_heads, name=f"{name}_xattn")([h, *text])
        return h

    h = layers.Conv2D(base * cfg.channel_mults[0], 3, padding="same", name="stem")(x_t)
    skips = [h]
    side = image_size
    last = len(cfg.channel_mults) - 1
    for level, mult in enumerate(cfg.channel_mults):
        for i in range(cfg.num_res_blocks):
            h = block(h, base * mult, side, f"down{level}_{i}")
            skips.append(h)
        if level != last:
            h = Downsample(base * mult, name=f"down{level}_resample")(h)
            side //= 2
            skips.append(h)

    mid_width = base * cfg.channel_mults[-1]
    h = ResBlock(mid_width, cfg.groups, cfg.dropout, name="mid_res1")([h, temb])
    h = AttentionBlock(cfg.groups, name="mid_attn")(h)
    if captions:
        h = CrossAttentionBlock(cfg.groups, cfg.text_heads, name="mid_xattn")([h, *text])
    h = ResBlock(mid_width, cfg.groups, cfg.dropout, name="mid_res2")([h, temb])

    for level in reversed(range(len(cfg.channel_mults))):
        width = base * cfg.channel_mults[level]
        for i in range(cfg.num_res_blocks + 1):
            h = layers.Concatenate(name=f"up{level}_{i}_skip")([h, skips.pop()])
            h = block(h, width, side, f"up{level}_{i}")
        if level != 0:
            h = Upsample(width, name=f"up{level}_resample")(h)
            side *= 2

    h = GroupNormalization(groups=cfg.groups, epsilon=1e-5, name="out_norm")(h)
    h = layers.Activation("silu", name="out_silu")(h)
    eps = layers.Conv2D(channels, 3, padding="same", kernel_initializer="zeros", dtype="float32", name="eps")(h)
    return keras.Model(inputs, eps, name="ddpm_unet")


def text_encoder(cfg: DDPMConfig) -> keras.Model:
    """The caption model's text encoder (vocabulary from ``cfg.text_vocabulary``; see imagegen.models.text)."""
    if len(cfg.text_vocabulary) < 3:
        raise ConfigError(
            "ddpm.captions=true needs the caption vocabulary of the training data (ddpm.text_vocabulary is filled "
            "from a processed dataset with captions at train time)"
        )
    return build_text_encoder(
        len(cfg.text_vocabulary), cfg.text_max_length, cfg.text_width, cfg.text_layers, cfg.text_heads
    )
