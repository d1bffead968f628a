"""Choices that depend on the device: bf16 compute where a GPU supports it (float32 elsewhere), and XLA."""

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


def resolve_jit(setting: str | bool, backend: str | None = None) -> bool:
    """``train.jit_compile``: ``auto`` is XLA on JAX and on a GPU, plain graph mode for TensorFlow on a CPU.

    On a CPU, XLA's compile of a DDPM or distillation step is long and its steps are no faster than
    TensorFlow's own graph (oneDNN) kernels overall, faster for some families and slower for others
    (``bench/train_throughput.py``), so the compile is not repaid in a pipeline's few thousand steps; the
    samplers' predictor (:mod:`imagegen.training.predict`) follows the same rule, as a compile per batch shape
    costs more than XLA saves in an evaluation's few hundred calls. JAX without ``jit`` dispatches
    every op from Python, which is never the faster choice.
    """
    if setting != "auto":
        return bool(setting)
    backend = backend or keras.backend.backend()
    if backend == "jax":
        return True
    return accelerator() == "gpu"
