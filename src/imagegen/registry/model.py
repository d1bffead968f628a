"""Log an imagegen model folder as an MLflow pyfunc that a serving environment can rebuild.

Requirements pin what the model needs to generate outside this environment (``mlflow models serve``
without ``--env-manager local``): imagegen itself as a wheel logged with the model
(:mod:`imagegen.registry.wheel`, referenced as ``code/imagegen-<version>-py3-none-any.whl``), and
the exact Keras, backend, numpy, pandas, pydantic and h5py versions installed here."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from imagegen.config import Params

# The backend that runs the model, pinned with Keras (the model folder loads under any of them).
BACKEND_PACKAGES = {"tensorflow": ("tensorflow",), "jax": ("jax", "jaxlib"), "torch": ("torch",)}
RUNTIME_PACKAGES = ("keras", "numpy", "pandas", "pydantic", "h5py")


def _pin(package: str) -> str:
    return f"{package}=={importlib.metadata.version(package)}"


def requirements(wheel: Path, backend: str) -> list[str]:
    """The model's pip requirements: the imagegen wheel (path relative to the model folder), then
    pins."""
    pins = [_pin(p) for p in (*RUNTIME_PACKAGES, *BACKEND_PACKAGES.get(backend, ()))]
    return [f"code/{wheel.name}", *pins]


def log_pyfunc(model_dir: Path, params: Params, tmp: Path) -> tuple[Any, list[str]]:
    """``mlflow.pyfunc.log_model`` of ``model_dir`` into the active run; (model info,
    requirements)."""
    import keras
    import mlflow

    from imagegen.registry.pyfunc import SAMPLER_PARAMS, ImagegenModel
    from imagegen.registry.wheel import build_wheel

    backend = keras.backend.backend()
    wheel = build_wheel(tmp)
    reqs = requirements(wheel, backend)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=ImagegenModel(sample=params.sample.model_dump(mode="json"), backend=backend),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(wheel)],
        input_example=([{"n": 2, "seed": 0}], dict(SAMPLER_PARAMS)),
        pip_requirements=reqs,
    )
    return info, reqs
