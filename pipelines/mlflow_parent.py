"""One MLflow parent run per pipeline run; stage processes find it through two environment variables.

``IMAGEGEN_MLFLOW_PARENT_RUN_ID`` names the parent and ``IMAGEGEN_RUN_TAGS`` (a JSON object) carries the
tags every child run gets: the Prefect flow-run id, the DVC experiment (or ``workspace``), the md5 of
``dvc.lock`` the stage started from, and the run's overrides. ``imagegen.tracking`` reads both, so a stage
started by ``dvc repro`` alone (no variables) makes a plain run and nothing in a stage knows who called it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PARENT_ENV = "IMAGEGEN_MLFLOW_PARENT_RUN_ID"
TAGS_ENV = "IMAGEGEN_RUN_TAGS"
TRACKING_ENV = "MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class ParentRun:
    tracking_uri: str
    experiment_id: str
    run_id: str

    def url(self, run_id: str | None = None) -> str | None:
        """The MLflow UI page of a run (this one by default), when the store is a server."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        base = self.tracking_uri.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id or self.run_id}"

    def model_version_url(self, name: str, version: str) -> str | None:
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/models/{name}/versions/{version}"


def child_env(parent: ParentRun | None, tags: Mapping[str, str]) -> dict[str, str]:
    """The variables a stage subprocess gets (the tracking URI too, so a ``dvc exp run --temp`` copy of the
    project logs to the project's store, not to a SQLite file in its temporary folder)."""
    env = {TAGS_ENV: json.dumps(dict(tags), sort_keys=True)}
    if parent is not None:
        env[PARENT_ENV] = parent.run_id
        env[TRACKING_ENV] = parent.tracking_uri
    return env


def start_parent(tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> ParentRun:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    return ParentRun(tracking_uri, experiment_id, run.info.run_id)


def finish_parent(parent: ParentRun, ok: bool, tags: Mapping[str, str], texts: Mapping[str, str]) -> None:
    """Final tags (the ``dvc.lock`` the run left), the markdown reports as artifacts, the run's status."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=parent.tracking_uri)
    for key, value in tags.items():
        client.set_tag(parent.run_id, key, value)
    for name, text in texts.items():
        client.log_text(parent.run_id, text, name)
    client.set_terminated(parent.run_id, "FINISHED" if ok else "FAILED")


def child_runs(parent: ParentRun) -> list[dict[str, Any]]:
    """The runs started under the parent: name, id, stage tag, UI link (when there is a UI)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=parent.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]  # a stage may log elsewhere
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )
    return [
        {
            "name": run.info.run_name,
            "run_id": run.info.run_id,
            "stage": run.data.tags.get("imagegen.stage", ""),
            "url": parent.url(run.info.run_id),
        }
        for run in runs
    ]
