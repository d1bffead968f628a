"""MLflow tracking behind one small interface, switched off cleanly by ``tracking.enabled: false``.

mlflow is imported only when a run actually starts, so training code can run where mlflow is not
installed (a GPU box with Keras and JAX only) as long as tracking is disabled there.
"""

from imagegen.tracking.runs import (
    NullRun,
    Run,
    default_tracking_uri,
    finite_metrics,
    resolve_tracking_uri,
    start_run,
)

__all__ = ["NullRun", "Run", "default_tracking_uri", "finite_metrics", "resolve_tracking_uri", "start_run"]
