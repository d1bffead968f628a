"""A processed dataset as an MLflow dataset input (``mlflow.log_input``), built from its manifest.

The arrays are not read: the manifest's content hash *is* the dataset version, so it becomes the
dataset's digest, and the folder becomes its source. MLflow caps a digest at 36 characters, so the
digest is the hash's first 32 hex digits and the full ``sha256:...`` is an input tag
(``imagegen.content_hash``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

DIGEST_LEN = 32


def digest_of(content_hash: str) -> str:
    """``sha256:abc...`` -> the first 32 hex digits (MLflow's limit is 36 characters)."""
    return content_hash.split(":", 1)[-1][:DIGEST_LEN]


def manifest_dataset(dataset_dir: Path) -> Any:
    """An ``mlflow.data`` MetaDataset: name, digest = content hash, source = the folder."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    folder = Path(dataset_dir).resolve()
    manifest = json.loads((folder / "manifest.json").read_text())
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are the local source
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(folder))
    return MetaDataset(
        source=source,
        name=str(manifest.get("dataset", folder.name)),
        digest=digest_of(str(manifest["content_hash"])),
    )


def log_dataset_input(client: Any, run_id: str, dataset_dir: Path, context: str) -> None:
    """What ``mlflow.log_input(dataset, context=...)`` does, on ``run_id`` rather than the active
    run."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = manifest_dataset(dataset_dir)
    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    tags = [
        InputTag(key=MLFLOW_DATASET_CONTEXT, value=context),
        InputTag(key="imagegen.content_hash", value=str(manifest["content_hash"])),
    ]
    entity = DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)
    client.log_inputs(run_id=run_id, datasets=[entity])
