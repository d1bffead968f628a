"""Stage ``register``: a trained, evaluated (and exported) model -> a new registry version aliased
``challenger``.

Its file output, ``<reports_dir>/register_<family>.json``, records the registered model's name, the alias the
new version got and the weights digest it carries, so that DVC sees the stage as done and a promotion step
knows what was registered. Only what code, params and data determine is in it: the version number depends on
how many versions the MLflow store already holds, so it goes to the untracked sibling
``register_<family>.run.json`` (and the CLI prints it); the registry itself answers by alias.

Provenance is checked before anything is written: the evaluation and the export must name the
``weights_digest`` of the model folder being registered (:mod:`imagegen.provenance`), else one line (exit 2)
says which artifact belongs to which weights. The version's tags carry the digest and the gate checks it
again at ``promote``."""

from __future__ import annotations

from pathlib import Path

from imagegen.artifact import read_model_meta
from imagegen.config import Params
from imagegen.errors import DataError, ImagegenError
from imagegen.fileio import read_json_object, write_json
from imagegen.outputs import check_output_file, json_with_keys
from imagegen.provenance import DIGEST_KEY, recorded_digest, require_same_weights


def _read_json(path: Path, what: str) -> dict:
    data = read_json_object(path, what)
    if data is None:
        raise DataError(f"{path}: no {what} here")
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
    meta = read_model_meta(Path(model_dir))  # one line for a missing, unreadable or digest-less model.json
    dataset = meta.get("dataset")
    if not isinstance(dataset, dict) or not {"name", "content_hash"} <= dataset.keys():
        raise DataError(
            f"{Path(model_dir) / 'model.json'}: no 'dataset' with 'name' and 'content_hash'; the registry names "
            "versions by dataset: re-run `imagegen train` to write a complete model.json"
        )
    out = Path(out) if out is not None else params.train.reports_dir / f"register_{meta['family']}.json"
    check_output_file(out, json_with_keys("name", "alias"), "registration record")
    digest = meta[DIGEST_KEY]
    evaluation_metrics = _read_json(Path(evaluation), "evaluation metrics (metrics.json of `imagegen evaluate`)")
    require_same_weights(
        digest, recorded_digest(evaluation_metrics, evaluation, "imagegen evaluate --model"), evaluation, model_dir
    )
    report = None
    if export_dir:
        export_metrics = Path(export_dir) / "metrics.json"
        report = _read_json(export_metrics, "export (metrics.json of `imagegen export`)")
        require_same_weights(digest, recorded_digest(report, export_metrics, "imagegen export"), export_dir, model_dir)
    from imagegen.registry import register

    name, version = register(params, Path(model_dir), evaluation_metrics, report, export_dir=export_dir)
    write_json(out, {"name": name, "alias": "challenger", DIGEST_KEY: digest})
    write_json(run_record(out), {"name": name, "version": version})
    return out


def run_record(out: Path) -> Path:
    """The untracked sibling of a registration record: ``register_dcgan.json`` -> ``register_dcgan.run.json``."""
    return out.with_name(f"{out.stem}.run.json")
