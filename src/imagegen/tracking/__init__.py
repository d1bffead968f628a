"""MLflow tracking behind one small interface, switched off cleanly by ``tracking.enabled: false``.

mlflow is imported only when a run actually starts, so training code can run where mlflow is not
installed (a GPU box with Keras and JAX only) as long as tracking is disabled there.
"""

from imagegen.tracking.context import PARENT_RUN_ENV, RUN_TAGS_ENV, git_commit, provenance_tags
from imagegen.tracking.process import ProcessRun, TrackingProcess
from imagegen.tracking.runs import (
    NullRun,
    Run,
    default_tracking_uri,
    finite_metrics,
    open_store,
    preflight_store,
    resolve_tracking_uri,
    start_run,
    store_errors,
)
from imagegen.tracking.store import TrackingStoreError, check_store

__all__ = [
    "PARENT_RUN_ENV",
    "RUN_TAGS_ENV",
    "NullRun",
    "ProcessRun",
    "Run",
    "TrackingProcess",
    "TrackingStoreError",
    "check_store",
    "default_tracking_uri",
    "finite_metrics",
    "git_commit",
    "open_store",
    "preflight_store",
    "provenance_tags",
    "resolve_tracking_uri",
    "start_run",
    "store_errors",
]
