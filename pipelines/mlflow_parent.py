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


def name_stage_runs(env: Mapping[str, str], stage: str) -> list[str]:
    """Name the runs DVC stage ``stage`` started under the flow's parent run after the stage itself.

    A stage's code names its run from what it sees (``evaluate-ddpm`` for ``evaluate@ddpm`` and for
    ``evaluate@ddpm_student`` alike); the DVC stage name (``evaluate@ddpm_student``) tells the runs of one
    pipeline run apart. Several runs of one stage are ``<stage> <their own name>``; the stage's own name is kept
    as the tag ``imagegen.run_name``. The runs are found by the ``dvc.stage`` tag the flow gave the stage.
    Returns the new names (none when tracking is off or DVC found nothing to run).
    """
    parent_id, uri = env.get(PARENT_ENV), env.get(TRACKING_ENV)
    if not parent_id or not uri:
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`dvc.stage` = '{stage}'",
        max_results=1000,
    )
    names = []
    for run in runs:
        own = run.info.run_name or ""
        name = stage if len(runs) == 1 else f"{stage} {own}".strip()
        if own != name:
            client.set_tag(run.info.run_id, "imagegen.run_name", own)
            client.update_run(run.info.run_id, name=name)
        names.append(name)
    return names
