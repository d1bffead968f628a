"""The caption side of a caption-conditioned DDPM: the tokenizer and a small transformer text encoder.

Tokenizer: words (lowercased runs of letters and digits) over the vocabulary built at ingest
(:mod:`imagegen.data.captions`, numpy only so that ingest never imports Keras; re-exported here), ``<pad>`` = 0,
``<unk>`` = 1, padded or cut to ``ddpm.text_max_length``. The all-pad sequence is the null caption.

Text encoder (trained with the U-Net, from scratch: no downloaded weights): token embedding + learned
positional embedding, ``ddpm.text_layers`` pre-LayerNorm transformer blocks (multi-head self-attention over
the real tokens, a 4x MLP), a final LayerNorm. It maps token ids (B, L) to ``[context (B, L, D), mask (B, L)]``
for the U-Net's cross-attention. Keras 3 ``keras.ops`` only, every layer registered and serializable. Where a
user has the weights of an encoder of the same shape (``ddpm.text_encoder_weights``: a local
``.weights.h5`` saved from :func:`build_text_encoder`), they are loaded before training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
from keras import layers, ops

from imagegen.data.captions import PAD, PAD_ID, UNK, UNK_ID, Tokenizer, build_vocabulary, words
from imagegen.errors import ConfigError

__all__ = [
    "PAD",
    "PAD_ID",
    "UNK",
    "UNK_ID",
    "LastTokenPool",
    "MaskedMeanPool",
    "POOLS",
    "PadMask",
    "TokenPositionEmbedding",
    "Tokenizer",
    "TransformerBlock",
    "build_text_encoder",
    "build_vocabulary",
    "load_text_encoder_weights",
    "tokenizer_for",
    "words",
]

_PACKAGE = "imagegen"
ENCODER_NAME = "text_encoder"


def tokenizer_for(cfg: Any) -> Tokenizer:
    """The tokenizer of a caption DDPM config (its stored vocabulary and max length)."""
    if len(cfg.text_vocabulary) < 2:
        raise ConfigError("ddpm.text_vocabulary is empty: a caption model takes it from its training data")
    return Tokenizer(list(cfg.text_vocabulary), cfg.text_max_length)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PadMask(layers.Layer):
    """Token ids (B, L) -> float32 (B, L): 1.0 for real tokens, 0.0 for ``<pad>``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, tokens: Any) -> Any:
        return ops.cast(ops.not_equal(ops.cast(tokens, "int32"), PAD_ID), "float32")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TokenPositionEmbedding(layers.Layer):
    """Token ids (B, L) -> token embedding + learned position embedding, (B, L, width)."""

    def __init__(self, vocab_size: int, max_length: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.max_length = int(max_length)
        self.width = int(width)
        self.tokens = layers.Embedding(self.vocab_size, self.width, name="tokens")
        self.positions = layers.Embedding(self.max_length, self.width, name="positions")

    def build(self, input_shape: tuple) -> None:
        self.tokens.build(input_shape)
        self.positions.build((self.max_length,))
        self.built = True

    def call(self, tokens: Any) -> Any:
        length = tokens.shape[1]
        positions = self.positions(ops.arange(length, dtype="int32"))
        return self.tokens(ops.cast(tokens, "int32")) + ops.expand_dims(positions, 0)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape, self.width)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "max_length": self.max_length,
            "width": self.width,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TransformerBlock(layers.Layer):
    """Pre-LayerNorm transformer encoder block on ``[h (B, L, D), mask (B, L)]`` -> (B, L, D).

    Self-attention only attends to real tokens (padding gets a large finite negative logit); softmax in float32.
    """

    def __init__(self, width: int, heads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = int(width)
        self.heads = int(heads)
        if self.width % self.heads:
            raise ConfigError(f"TransformerBlock: heads={self.heads} does not divide width={self.width}")
        self.norm1 = layers.LayerNormalization(epsilon=1e-5, name="norm1")
        self.qkv = layers.Dense(3 * self.width, name="qkv")
        self.proj = layers.Dense(self.width, name="proj")
        self.norm2 = layers.LayerNormalization(epsilon=1e-5, name="norm2")
        self.mlp1 = layers.Dense(4 * self.width, activation="gelu", name="mlp1")
        self.mlp2 = layers.Dense(self.width, name="mlp2")

    def build(self, input_shape: list[tuple]) -> None:
        h_shape = input_shape[0]
        self.norm1.build(h_shape)
        self.qkv.build(h_shape)
        self.proj.build(h_shape)
        self.norm2.build(h_shape)
        self.mlp1.build(h_shape)
        self.mlp2.build((*h_shape[:-1], 4 * self.width))
        self.built = True

    def call(self, inputs: list[Any]) -> Any:
        h, mask = inputs
        length = h.shape[1]
        head_dim = self.width // self.heads
        qkv = ops.reshape(self.qkv(self.norm1(h)), (-1, length, 3, self.heads, head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = ops.einsum("bihc,bjhc->bhij", ops.cast(q, "float32"), ops.cast(k, "float32"))
        bias = (1.0 - ops.cast(mask, "float32")) * -1e9
        logits = logits * (1.0 / math.sqrt(head_dim)) + ops.expand_dims(ops.expand_dims(bias, 1), 1)
        weights = ops.softmax(logits, axis=-1)
        attended = ops.einsum("bhij,bjhc->bihc", ops.cast(weights, v.dtype), v)
        h = h + self.proj(ops.reshape(attended, (-1, length, self.width)))
        return h + self.mlp2(self.mlp1(self.norm2(h)))

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "width": self.width, "heads": self.heads}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedMeanPool(layers.Layer):
    """``[h (B, L, D), mask (B, L)]`` -> (B, D): the mean over real tokens (zeros for the null caption)."""

    def call(self, inputs: list[Any]) -> Any:
        h, mask = inputs
        mask = ops.cast(mask, h.dtype)
        total = ops.sum(h * ops.expand_dims(mask, -1), axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1.0)

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return (input_shape[0][0], input_shape[0][2])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LastTokenPool(layers.Layer):
    """``[h (B, L, D), mask (B, L)]`` -> (B, D): the features of the last real token (zeros for the null caption).

    Captions are padded at the end, so the last real token sits at ``sum(mask) - 1``. After the encoder's
    self-attention it summarises the caption, and for template captions it is the word that tells them apart.
    """

    def call(self, inputs: list[Any]) -> Any:
        h, mask = inputs
        mask = ops.cast(mask, h.dtype)
        last = ops.sum(mask, axis=1, keepdims=True) - 1.0  # (B, 1); -1 for the null caption: no position
        positions = ops.cast(ops.expand_dims(ops.arange(h.shape[1]), 0), h.dtype)
        pick = ops.cast(ops.equal(positions, last), h.dtype) * mask
        return ops.sum(h * ops.expand_dims(pick, -1), axis=1)

    def compute_output_shape(self, input_shape: list[tuple]) -> tuple:
        return (input_shape[0][0], input_shape[0][2])


POOLS = {"mean": MaskedMeanPool, "last": LastTokenPool}


def build_text_encoder(vocab_size: int, max_length: int, width: int, depth: int, heads: int) -> keras.Model:
    """Token ids (B, max_length) int32 -> ``[context (B, max_length, width), mask (B, max_length)]``."""
    tokens = keras.Input(shape=(max_length,), dtype="int32", name="tokens")
    mask = PadMask(name="pad_mask")(tokens)
    h = TokenPositionEmbedding(vocab_size, max_length, width, name="embedding")(tokens)
    for i in range(depth):
        h = TransformerBlock(width, heads, name=f"block{i}")([h, mask])
    h = layers.LayerNormalization(epsilon=1e-5, name="out_norm")(h)
    return keras.Model(tokens, [h, mask], name=ENCODER_NAME)


def load_text_encoder_weights(encoder: keras.Model, path: Path) -> None:
    """Load a user's local ``.weights.h5`` into ``encoder``; a ConfigError names the file when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ddpm.text_encoder_weights={path}: no such file; expected a local .weights.h5")
    try:
        encoder.load_weights(path)
    except Exception as exc:  # h5py/keras raise several kinds for a missing or mismatched weight
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"ddpm.text_encoder_weights={path}: does not fit this text encoder ({reason}); expected weights saved "
            "from imagegen.models.text.build_text_encoder with the same vocabulary size, width, layers and heads"
        ) from None
