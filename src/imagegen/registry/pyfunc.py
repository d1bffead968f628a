"""The registered model: an MLflow ``pyfunc`` wrapping an imagegen model folder.

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(pd.DataFrame({"n": [8], "seed": [0]}))``
returns uint8 images (N, H, W, C); so does ``predict([{"n": 8, "seed": 0}])``. A pyfunc rather than
the ``mlflow.keras`` flavour because generating is more than one forward pass (a diffusion model
runs its sampler), and because the folder loads under any Keras backend.

``predict`` is type-hinted with ``list[GenerateRequest]`` (a pydantic model): MLflow 3 infers the
input schema from the hint and validates every request against it (``n`` >= 1 and at most
``MAX_IMAGES``, ``seed`` >= 0) before ``predict`` runs, also behind ``mlflow models serve``. A
DataFrame with ``n`` and ``seed`` columns is turned into the list of requests by MLflow."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

MAX_IMAGES = 4096
# Diffusion sampler settings a request may give as MLflow params; these defaults mean
# "the model's own"
# (a distilled student's grid, else sample.* defaults), as `imagegen sample` without flags.
SAMPLER_PARAMS: dict[str, Any] = {"sampler": "", "steps": 0, "eta": -1.0}


class GenerateRequest(BaseModel):
    """One request: ``n`` images from ``seed`` (the same seed gives the same images)."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=1, le=MAX_IMAGES)
    seed: int = Field(default=0, ge=0)


def sampler_overrides(params: dict[str, Any] | None) -> dict[str, Any]:
    """The sampler settings a caller gave (see ``SAMPLER_PARAMS``; diffusion models only)."""
    given = {**SAMPLER_PARAMS, **(params or {})}
    out: dict[str, Any] = {}
    if given["sampler"]:
        out["sampler"] = str(given["sampler"])
    if int(given["steps"]) > 0:
        out["steps"] = int(given["steps"])
    if float(given["eta"]) >= 0:
        out["eta"] = float(given["eta"])
    return out


class ImagegenModel(mlflow.pyfunc.PythonModel):
    """``sample`` is the project's ``sample:`` section at registration (sampler defaults a model's
    own grid and request params override, as for `imagegen sample`)."""

    def __init__(self, sample: dict[str, Any] | None = None, backend: str | None = None) -> None:
        self._sample = dict(sample or {})
        self._backend = backend

    def load_context(self, context: Any) -> None:
        import os

        if getattr(self, "_backend", None):  # before Keras is first imported in a serving process
            os.environ.setdefault("KERAS_BACKEND", self._backend)
        from imagegen.artifact import load_model

        self._model_dir = context.artifacts["model_dir"]
        self._loaded = load_model(self._model_dir)

    def predict(
        self,
        context: Any,
        model_input: list[GenerateRequest],
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """``n`` images per request from its ``seed``; requests are concatenated (uint8 N,H,W,C)."""
        from types import SimpleNamespace

        from imagegen.config import SampleConfig
        from imagegen.sampling import generate_images

        project = SimpleNamespace(sample=SampleConfig.model_validate(getattr(self, "_sample", {})))
        sampler = sampler_overrides(params)
        images = [
            generate_images(self._model_dir, r.n, seed=r.seed, show_progress=False, params=project, **sampler)[0]
            for r in (
                req if isinstance(req, GenerateRequest) else GenerateRequest.model_validate(req) for req in model_input
            )
        ]
        return np.concatenate(images)
