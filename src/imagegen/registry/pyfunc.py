"""The registered model: an MLflow ``pyfunc`` wrapping an imagegen model folder.

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(pd.DataFrame({"n": [8], "seed": [0]}))``
returns uint8 images (N, H, W, C); so does ``predict([{"n": 8, "seed": 0}])``. A pyfunc rather than
the ``mlflow.keras`` flavour because generating is more than one forward pass (a diffusion model
runs its sampler), and because the folder loads under any Keras backend.

``predict`` is type-hinted with ``list[GenerateRequest]`` (a pydantic model): MLflow 3 infers the
input schema from the hint and validates every request against it (``n`` >= 1 and at most
``MAX_IMAGES``, ``seed`` >= 0) before ``predict`` runs, also behind ``mlflow models serve``. A
DataFrame with ``n`` and ``seed`` columns is turned into the list of requests by MLflow. An empty
list of requests (``{"inputs": []}`` to the scoring server) is answered with zero images, an empty
uint8 array (0, H, W, C), without sampling.

The loaded python model says which weights it serves: ``weights_digest`` (the ``"sha256:..."`` of
the model folder's ``model.json``; None for a folder written before it was recorded), e.g.
``mlflow.pyfunc.load_model(uri).unwrap_python_model().weights_digest``."""

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
    own grid and request params override, as for `imagegen sample`).

    The model folder is loaded once per serving process (``load_context``) and one sampler, with its
    compiled predictor, is kept per distinct sampler setting, so a request costs sampling only: no model
    load and no re-trace per call.

    ``weights_digest``: the digest of the weights being served, as the folder's ``model.json`` records it
    (``"sha256:..."``); None before ``load_context`` or when the folder does not record one."""

    weights_digest: str | None = None

    def __init__(self, sample: dict[str, Any] | None = None, backend: str | None = None) -> None:
        self._sample = dict(sample or {})
        self._backend = backend

    def __getstate__(self) -> dict[str, Any]:
        """What is pickled into the logged model: the settings, never a loaded model or its samplers
        (MLflow runs ``predict`` on the input example before it pickles this object)."""
        return {"_sample": self._sample, "_backend": self._backend}

    def load_context(self, context: Any) -> None:
        import os

        if getattr(self, "_backend", None):  # before Keras is first imported in a serving process
            os.environ.setdefault("KERAS_BACKEND", self._backend)
        from imagegen.artifact import load_model
        from imagegen.config import SampleConfig

        self._model_dir = context.artifacts["model_dir"]
        self._loaded = load_model(self._model_dir)
        self.weights_digest = weights_digest(self._loaded.meta)
        self._defaults = SampleConfig.model_validate(getattr(self, "_sample", {}))
        self._samplers: dict[str, Any] = {}

    def _sampler(self, params: dict[str, Any] | None) -> Any:
        """The sampler for this request's settings (``SAMPLER_PARAMS`` over the registered ``sample:``
        section and the model's own grid), made on first use."""
        import json

        from imagegen.sampling import make_sampler, resolve_settings

        settings = resolve_settings(self._defaults, self._loaded.meta, sampler_overrides(params))
        key = json.dumps(settings.record(), sort_keys=True)
        if key not in self._samplers:
            self._samplers[key] = make_sampler(self._loaded.family, settings)
        return self._samplers[key]

    def predict(
        self,
        context: Any,
        model_input: list[GenerateRequest],
        params: dict[str, Any] | None = None,
    ) -> np.ndarray:
        """``n`` images per request from its ``seed``; requests are concatenated (uint8 N,H,W,C). No
        requests, no images: an empty (0, H, W, C) array, not an error."""
        from imagegen.profiling import phase
        from imagegen.sampling import BATCH_SIZE, sample_images

        requests = [r if isinstance(r, GenerateRequest) else GenerateRequest.model_validate(r) for r in model_input]
        if not requests:
            return self.no_images()
        sample = self._sampler(params)
        with phase("sample", "work"):
            images = [sample_images(sample, self._loaded.family.spec, r.n, r.seed, BATCH_SIZE)[0] for r in requests]
        return np.concatenate(images)

    def no_images(self) -> np.ndarray:
        """The answer to an empty request list: zero images of the model's shape (uint8 0,H,W,C)."""
        return np.zeros((0, *self._loaded.family.spec["image_shape"]), dtype=np.uint8)


def weights_digest(meta: dict[str, Any]) -> str | None:
    """The ``weights_digest`` a model folder's ``model.json`` records (a ``"sha256:..."`` string), else None."""
    digest = meta.get("weights_digest")
    return digest if isinstance(digest, str) and digest else None
