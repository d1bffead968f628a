"""Choices that depend on the device: bf16 compute where a GPU supports it (float32 elsewhere), bfloat16
convolutions on a CPU that has them, and XLA."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping
from typing import Any

import keras

CPU_MATH_ENV = "TF_SET_ONEDNN_FPMATH_MODE"
"""TensorFlow's switch for oneDNN's float32 math mode (``BF16``: float32 convolutions computed in bfloat16).
oneDNN reads it once, when the process creates its first convolution; later changes do nothing."""


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
    ``float32``; ``float32`` and ``bf16`` as given."""
    if setting == "auto":
        return "bf16" if spec.cpu_bf16_math else "float32"
    return setting


def request_cpu_math(mode: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Ask oneDNN to compute float32 convolutions in bfloat16 (``mode == "bf16"``); whether this call asked.

    Like TF32 on a GPU, tensors stay float32 and only the products inside a convolution are rounded to bfloat16
    (8 bits of mantissa); on CPUs with AMX the convolutions then run on its tile units, several times faster on
    the U-Net's 3x3 convolutions. It is a process-wide setting that oneDNN reads once, so only a process that
    runs one stage may call this (the ``imagegen train`` and ``imagegen distill`` commands), before TensorFlow's
    first convolution; a ``TF_SET_ONEDNN_FPMATH_MODE`` the environment already sets is the user's choice and kept.
    ``float32`` asks nothing: it is oneDNN's default. CPUs without bfloat16 instructions ignore the request
    (:func:`cpu_math_in_effect` tells).
    """
    env = os.environ if environ is None else environ
    if mode != "bf16" or CPU_MATH_ENV in env:
        return False
    env[CPU_MATH_ENV] = "BF16"
    return True


def cpu_math_in_effect() -> str:
    """``"bf16"`` when this process's convolutions round float32 inputs to bfloat16, else ``"float32"``.

    Measured, not inferred from settings: a one-pixel convolution of 1 + 2**-9 (exact in float32, 1.0 in
    bfloat16) by a kernel of ones over 8 channels, divided by 8. So it is true of the machine (a CPU without
    bfloat16 support ignores the request) and of the order things happened (a request after the first
    convolution is ignored too)."""
    x = keras.ops.full((1, 1, 1, 8), 1.0 + 2.0**-9, dtype="float32")
    kernel = keras.ops.full((1, 1, 8, 1), 1.0 / 8.0, dtype="float32")
    value = float(keras.ops.convert_to_numpy(keras.ops.conv(x, kernel, padding="same"))[0, 0, 0, 0])
    return "bf16" if value == 1.0 else "float32"
