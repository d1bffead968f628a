"""Stage ``register``: a trained, evaluated (and exported) model -> a new registry version aliased
``challenger``.

Its file output, ``<reports_dir>/register_<family>.json``, records the name and version so that DVC
sees the stage as done and a promotion step knows what was registered."""

from __future__ import annotations

import json
from pathlib import Path

from imagegen.config import Params
from imagegen.errors import DataError, ImagegenError
from imagegen.fileio import write_json


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: no {what} here")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not JSON ({exc}); expected the {what}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, the {what}")
    return data


def run_register(
    params: Params,
    model_dir: Path,
    evaluation: Path,
    export_dir: Path | None = None,
    out: Path | None = None,
) -> Path:
    """Register ``model_dir`` with its evaluation metrics (and, given ``export_dir``, the export
    folder of `imagegen export`: its parity verdict becomes a tag and its SavedModel/TFLite files
    are logged with the version's run); write ``<reports_dir>/register_<family>.json`` and return
    its path."""
    if not params.tracking.enabled:
        raise ImagegenError(
            "tracking.enabled is false: the model registry lives in MLflow, so register needs tracking on"
        )
    from imagegen.registry import register

    meta = _read_json(Path(model_dir) / "model.json", "trained model (model.json)")
    evaluation_metrics = _read_json(Path(evaluation), "evaluation metrics (metrics.json of `imagegen evaluate`)")
    report = (
        _read_json(Path(export_dir) / "metrics.json", "export (metrics.json of `imagegen export`)")
        if export_dir
        else None
    )
    name, version = register(params, Path(model_dir), evaluation_metrics, report, export_dir=export_dir)
    out = Path(out) if out is not None else params.train.reports_dir / f"register_{meta['family']}.json"
    write_json(out, {"name": name, "version": version, "alias": "challenger"})
    return out
