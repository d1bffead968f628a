"""Pick the train-step implementation for the active Keras backend (and, on JAX, the device mesh)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import keras
import numpy as np

from imagegen.errors import ConfigError
from imagegen.training.families.base import Family
from imagegen.training.precision import resolve_jit


class Stepper(Protocol):
    family: Family  # whose networks and phases the step trains
    # This process's rows of each global batch in a multi-host run (a stream need read no others), else None.
    local_rows: slice | None

    def step(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]: ...
    def pull(self) -> None: ...
    def push(self) -> None: ...


def make_stepper(
    family: Family, jit_compile: str | bool = "auto", devices: str | int = 1, batch_size: int | None = None
) -> Stepper:
    """The stepper for the backend; ``devices`` (``train.devices``) > 1 trains data-parallel on JAX.

    ``batch_size`` is the global batch, which must divide over the devices (checked here, before any
    compilation, with an error naming ``train.batch_size`` and ``train.devices``).
    """
    from imagegen.training.distributed import resolve_devices

    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise ConfigError(f"KERAS_BACKEND={backend!r}: training supports 'tensorflow' and 'jax'")
    n = resolve_devices(devices, batch_size or 1, backend) if batch_size else 1
    jit_compile = resolve_jit(jit_compile, backend)
    if backend == "tensorflow":
        from imagegen.training.step_tensorflow import TensorFlowStepper

        return TensorFlowStepper(family, jit_compile=jit_compile)
    import jax

    from imagegen.training.distributed import DataParallel
    from imagegen.training.step_jax import JaxStepper

    parallel = None
    if n > 1 or jax.process_count() > 1:
        parallel = DataParallel.create(n, int(batch_size))  # type: ignore[arg-type]
    return JaxStepper(family, jit_compile=jit_compile, parallel=parallel)
