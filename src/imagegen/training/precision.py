"""Choices that depend on the device: bf16 compute where a GPU supports it (float32 elsewhere), bfloat16
convolutions on a CPU that has them, and XLA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

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


def resolve_cpu_math(setting: str, spec: Any) -> str:
    """``train.cpu_math``: ``auto`` -> ``bf16`` where the family declares it (``spec.cpu_bf16_math``), else
    ``float32``; ``float32`` and ``bf16`` as given. :func:`imagegen.startup.cpu_math_requested` asks for it."""
    if setting == "auto":
        return "bf16" if spec.cpu_bf16_math else "float32"
    return setting


def cpu_math_in_effect() -> str:
    """``"bf16"`` when this process's convolutions round float32 inputs to bfloat16, else ``"float32"``.

    Measured, not inferred from settings: a one-pixel convolution of 1 + 2**-9 (exact in float32, 1.0 in
    bfloat16) by a kernel of ones over 8 channels, divided by 8. So it is true of the machine (a CPU without AMX
    ignores the request, AVX512_BF16 or not: AMD's Zen 4 computes float32) and of the order things happened (a
    request after the first convolution is ignored too)."""
    x = keras.ops.full((1, 1, 1, 8), 1.0 + 2.0**-9, dtype="float32")
    kernel = keras.ops.full((1, 1, 8, 1), 1.0 / 8.0, dtype="float32")
    value = float(keras.ops.convert_to_numpy(keras.ops.conv(x, kernel, padding="same"))[0, 0, 0, 0])
    return "bf16" if value == 1.0 else "float32"
