"""Start MLflow runs and log params, metrics, images and files to them."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from imagegen.config import TrackingConfig
from imagegen.errors import ImagegenError
from imagegen.profiling import phase
from imagegen.tracking.context import (
    PARENT_RUN_ENV,
    parent_run_id_from_env,
    provenance_tags,
    run_tags_from_env,
)
from imagegen.tracking.dataset import log_dataset_input
from imagegen.tracking.store import SWITCH_OFF, TrackingStoreError, check_store

if TYPE_CHECKING:
    from imagegen.tracking.process import ProcessRun, TrackingProcess

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
    """An active MLflow run; all calls go to this run explicitly (no reliance on the global active
    run)."""

    def __init__(self, client: Any, run_id: str, tracking_uri: str) -> None:
        self._client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri

    @property
    def client(self) -> Any:
        """The MlflowClient of this run's store (tracking and registry)."""
        return self._client

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in params.items()]
        with store_errors(self.tracking_uri):
            for i in range(0, len(items), 100):
                self._client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        if items:
            with store_errors(self.tracking_uri):
                self._client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        path = Path(path)
        with store_errors(self.tracking_uri):
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, image: np.ndarray, name: str) -> None:
        with store_errors(self.tracking_uri):
            self._client.log_image(self.run_id, np.asarray(image), artifact_file=name)

    def log_dict(self, obj: Any, name: str) -> None:
        with store_errors(self.tracking_uri):
            self._client.log_dict(self.run_id, obj, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        with store_errors(self.tracking_uri):
            for key, value in tags.items():
                self._client.set_tag(self.run_id, key, str(value))


def finite_metrics(tree: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a nested report as dotted keys (booleans and text left out), for
    ``log_metrics``."""
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


def preflight_store(cfg: TrackingConfig) -> str | None:
    """Check the store of ``cfg`` without importing mlflow (seconds, not minutes); its URI, or None
    when tracking is off. The CLI calls this before importing TensorFlow, so a dead server is one
    line before any work."""
    if not cfg.enabled:
        return None
    uri = resolve_tracking_uri(cfg)
    check_store(
        uri,
        timeout_s=cfg.connect_timeout_s,
        http_timeout_s=cfg.http_timeout_s,
        http_retries=cfg.http_max_retries,
    )
    return uri


def open_store(cfg: TrackingConfig) -> tuple[Any, str]:
    """An MlflowClient on the checked store of ``cfg`` (tracking and registry), and its URI."""
    uri = preflight_store(cfg.model_copy(update={"enabled": True}))
    assert uri is not None
    from mlflow.tracking import MlflowClient

    try:  # MLflow opens the store here (and creates it in a new file)
        return MlflowClient(tracking_uri=uri, registry_uri=uri), uri
    except Exception as exc:
        if is_store_failure(exc):
            raise store_failure(uri, exc) from None
        raise


_OUT_OF_DATE = re.compile(r"out-of-date database schema \(found version (\S+), but expected (\S+)\)")


def store_failure(uri: str, exc: BaseException) -> TrackingStoreError:
    """One line for an MLflow/HTTP/SQL failure of the store itself (not of the caller's code)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    old = _OUT_OF_DATE.search(first)
    if old is not None:  # a store older than this MLflow: MLflow does not migrate it by itself
        return TrackingStoreError(
            f"MLflow store {uri}: its schema revision {old.group(1)} is older than this MLflow's "
            f"{old.group(2)}: back it up, then run `mlflow db upgrade {uri}` "
            f"(or switch tracking off with {SWITCH_OFF})"
        )
    return TrackingStoreError(
        f"MLflow store {uri} failed: {type(exc).__name__}: {first} (switch tracking off with {SWITCH_OFF})"
    )


def is_store_failure(exc: BaseException) -> bool:
    """MLflow, SQLAlchemy and HTTP errors: the store broke, not the stage."""
    module = type(exc).__module__.split(".", 1)[0]
    return module in ("mlflow", "sqlalchemy", "requests", "urllib3", "sqlite3")


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Turn a failure of the store into a :class:`TrackingStoreError` naming ``uri``."""
    try:
        with phase("mlflow", "tracking"):  # every store call goes through here
            yield
    except ImagegenError:
        raise
    except Exception as exc:
        if is_store_failure(exc):
            raise store_failure(uri, exc) from None
        raise


def _run_experiment(client: Any, cfg: TrackingConfig, uri: str, parent: str | None) -> str:
    """The parent's experiment for a child run (MLflow shows children under their parent), else
    ours."""
    if parent is None:
        return _experiment_id(client, cfg.experiment, uri)
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(parent).info.experiment_id
    except MlflowException:
        raise TrackingStoreError(
            f"parent run {parent} (${PARENT_RUN_ENV} or the caller) does not exist in {uri}"
        ) from None


def begin_run(
    client: Any,
    uri: str,
    cfg: TrackingConfig,
    run_name: str,
    *,
    stage: str,
    parent: str | None,
    env_tags: Mapping[str, str],
    dataset_hash: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    dataset_dir: Path | None = None,
    dataset_context: str = "training",
) -> Run:
    """Create a run in the store of ``client`` with every tag :func:`start_run` promises, its params and its
    dataset input; where the client lives (this process or :mod:`imagegen.tracking.process`) is the caller's
    choice."""
    all_tags = {"imagegen.stage": stage, "mlflow.runName": run_name, **provenance_tags()}
    all_tags.update(env_tags)
    if dataset_hash:
        all_tags["dataset.content_hash"] = dataset_hash
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    with store_errors(uri):
        exp_id = _run_experiment(client, cfg, uri, parent)
        mlrun = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        run = Run(client, mlrun.info.run_id, uri)
        if params:
            run.log_params(params)
        if dataset_hash:
            run.log_params({"data.content_hash": dataset_hash})
        if dataset_dir is not None:
            log_dataset_input(client, run.run_id, Path(dataset_dir), dataset_context)
    return run


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
    dataset_dir: Path | None = None,
    dataset_context: str = "training",
    process: TrackingProcess | None = None,
) -> Iterator[Run | NullRun | ProcessRun]:
    """Open a run (or a :class:`NullRun` when tracking is disabled); it ends FAILED if the body
    raises.

    The store is checked first (an unreachable server or a broken SQLite file is one line naming it,
    before any work). A run is a child of ``parent_run_id``, else of
    ``$IMAGEGEN_MLFLOW_PARENT_RUN_ID``; it carries ``$IMAGEGEN_RUN_TAGS``, ``git.commit`` and
    ``dvc.lock_md5``; given ``dataset_dir`` (a processed dataset folder), its manifest is logged as
    the run's dataset input. Given ``process`` (started by the CLI before TensorFlow's import), the run is
    logged from that child process, whose mlflow import has overlapped the stage's start; otherwise from
    this process."""
    if not cfg.enabled:
        yield NullRun()
        return
    env_tags = run_tags_from_env()
    parent = parent_run_id or parent_run_id_from_env()
    opened = {
        "stage": stage,
        "parent": parent,
        "env_tags": env_tags,
        "dataset_hash": dataset_hash,
        "params": dict(params) if params else None,
        "tags": dict(tags) if tags else None,
        "dataset_dir": Path(dataset_dir).resolve() if dataset_dir is not None else None,
        "dataset_context": dataset_context,
    }
    run: Run | ProcessRun
    if process is not None:
        with phase("mlflow.open_store", "tracking"):  # waits for the child's mlflow import, if still running
            run = process.begin_run(run_name, **opened)
        end: Callable[[str], None] = run.end
    else:
        with phase("mlflow.open_store", "tracking"):  # imports mlflow
            client, uri = open_store(cfg)
        run = begin_run(client, uri, cfg, run_name, **opened)

        def end(status: str) -> None:
            with store_errors(uri):
                client.set_terminated(run.run_id, status=status)

    try:
        yield run
    except BaseException:
        with contextlib.suppress(Exception):  # the store may be what failed
            end("FAILED")
        raise
    end("FINISHED")
