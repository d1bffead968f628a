"""The registered model: an MLflow ``pyfunc`` wrapping an imagegen model folder.

``mlflow.pyfunc.load_model("models:/NAME@champion").predict(pd.DataFrame({"n": [8], "seed": [0]}))`` returns
uint8 images (N, H, W, C). A pyfunc rather than the ``mlflow.keras`` flavour because generating is more than
one forward pass (a diffusion model runs its sampler), and because the folder loads under any Keras backend.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np


class ImagegenModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from imagegen.artifact import load_model

        self._model_dir = context.artifacts["model_dir"]
        self._loaded = load_model(self._model_dir)

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads type hints as a schema
        """One row per request: ``n`` images from ``seed``; rows are concatenated (uint8 N,H,W,C)."""
        from imagegen.sampling import generate_images

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        sampler = {"sampler": "ddim", "steps": 50, "eta": 0.0, "clip_x0": True, **(params or {})}
        images = [
            generate_images(self._model_dir, int(r["n"]), seed=int(r["seed"]), show_progress=False, **sampler)[0]
            for r in rows
        ]
        return np.concatenate(images)
