"""Stage ``register``: a trained, evaluated (and exported) model -> a new registry version aliased ``challenger``.

Its file output, ``<reports_dir>/register_<family>.json``, records the name and version so that DVC sees the
stage as done and a promotion step knows what was registered.
"""

from __future__ import annotations

import json
from pathlib import Path

from imagegen.config import Params
from imagegen.errors import DataError, ImagegenError
from imagegen.fileio import write_json


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: no {what} here")
    return json.loads(path.read_text())


def run_register(
    params: Params, model_dir: Path, evaluation: Path, export_report: Path | None = None, out: Path | None = None
) -> Path:
    if not params.tracking.enabled:
        raise ImagegenError("tracking.enabled is false: the model registry lives in MLflow, so register needs tracking on")
    from imagegen.registry import register

    meta = _read_json(Path(model_dir) / "model.json", "trained model (model.json)")
    evaluation_metrics = _read_json(Path(evaluation), "evaluation metrics (metrics.json of `imagegen evaluate`)")
    report = _read_json(Path(export_report), "export report (metrics.json of `imagegen export`)") if export_report else None
    name, version = register(params, Path(model_dir), evaluation_metrics, report)
    out = Path(out) if out is not None else params.train.reports_dir / f"register_{meta['family']}.json"
    write_json(out, {"name": name, "version": version, "alias": "challenger"})
    return out
