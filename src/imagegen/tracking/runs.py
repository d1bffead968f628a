"""Start MLflow runs and log params, metrics, images and files to them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imagegen.config import TrackingConfig

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
_MAX_PARAM_LEN = 6000


def default_tracking_uri(root: Path | None = None) -> str:
    """A SQLite file in the project (MLflow 3's own default spelling is ``sqlite:///mlflow.db``)."""
    root = Path.cwd() if root is None else root
    return f"sqlite:///{(root / DEFAULT_DB).resolve()}"


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """params ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else the project's SQLite file."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None: ...
    def log_image(self, image: np.ndarray, name: str) -> None: ...
    def log_dict(self, obj: Any, name: str) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...


class NullRun:
    """Stands in when tracking is off: every call is accepted and does nothing."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, image: np.ndarray, name: str) -> None:
        pass

    def log_dict(self, obj: Any, name: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass


class Run:
    """An active MLflow run; all calls go to this run explicitly (no reliance on the global active run)."""

    def __init__(self, client: Any, run_id: str, tracking_uri: str) -> None:
        self._client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if items:
            self._client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, image: np.ndarray, name: str) -> None:
        self._client.log_image(self.run_id, np.asarray(image), artifact_file=name)

    def log_dict(self, obj: Any, name: str) -> None:
        self._client.log_dict(self.run_id, obj, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))


def finite_metrics(tree: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a nested report as dotted keys (booleans and text left out), for ``log_metrics``."""
    from imagegen.config import flatten

    return {
        key: float(value)
        for key, value in flatten(dict(tree)).items()
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
    }


def _experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if tracking_uri.startswith("sqlite:///"):
        # Keep artifacts beside the database rather than in whatever folder the process started in.
        db_path = Path(tracking_uri[len("sqlite:///") :])
        artifact_location = (db_path.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def start_run(
    cfg: TrackingConfig,
    run_name: str,
    *,
    stage: str,
    dataset_hash: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[Run | NullRun]:
    """Open a run (or a :class:`NullRun` when tracking is disabled); it ends FAILED if the body raises."""
    if not cfg.enabled:
        yield NullRun()
        return
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment_id(client, cfg.experiment, uri)
    all_tags = {"imagegen.stage": stage, "mlflow.runName": run_name}
    if dataset_hash:
        all_tags["dataset.content_hash"] = dataset_hash
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    mlrun = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    run = Run(client, mlrun.info.run_id, uri)
    try:
        if params:
            run.log_params(params)
        if dataset_hash:
            run.log_params({"data.content_hash": dataset_hash})
        yield run
    except BaseException:
        client.set_terminated(run.run_id, status="FAILED")
        raise
    client.set_terminated(run.run_id, status="FINISHED")
