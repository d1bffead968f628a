"""Pick the train-step implementation for the active Keras backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import keras
import numpy as np

from imagegen.errors import ConfigError
from imagegen.training.families.base import Family


class Stepper(Protocol):
    def step(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]: ...
    def pull(self) -> None: ...
    def push(self) -> None: ...


def make_stepper(family: Family, jit_compile: bool = True) -> Stepper:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from imagegen.training.step_tensorflow import TensorFlowStepper

        return TensorFlowStepper(family, jit_compile=jit_compile)
    if backend == "jax":
        from imagegen.training.step_jax import JaxStepper

        return JaxStepper(family, jit_compile=jit_compile)
    raise ConfigError(f"KERAS_BACKEND={backend!r}: training supports 'tensorflow' and 'jax'")
