"""Mixed precision: bf16 compute where a GPU supports it, float32 elsewhere."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras


def accelerator() -> str:
    """'gpu' if the active backend sees a GPU, else 'cpu'."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "gpu" if jax.default_backend() == "gpu" else "cpu"
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    return "cpu"


def resolve_policy(setting: str) -> str:
    """``auto`` -> mixed_bfloat16 on GPU, float32 on CPU; ``bf16`` -> mixed_bfloat16; ``off`` -> float32."""
    if setting == "bf16" or (setting == "auto" and accelerator() == "gpu"):
        return "mixed_bfloat16"
    return "float32"


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build networks under ``name`` and restore the previous global policy afterwards."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
