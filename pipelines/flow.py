"""The imagegen pipeline as a Prefect flow, derived from ``dvc.yaml``.

The flow has no stage list of its own: it reads the stages and their order from DVC
(:mod:`pipelines.dvc_graph`) and runs one Prefect task per stage, each ``dvc repro --single-item <stage>``
in the project folder. A Prefect run therefore leaves ``dvc.lock``, the DVC cache and ``dvc status``
exactly as ``dvc repro`` would. Overrides (``-S key=value``) run as a DVC experiment
(``dvc exp run --temp --name prefect-<id>``), recorded where ``dvc exp show`` finds them and never written
over the tracked ``params.yaml``. Prefect adds what DVC lacks: schedules, workers, a concurrency limit
(``prefect.yaml``), logs and artifacts.

The flow then decides the promotion of every shipped model (``export.ship``) and publishes artifacts:
evaluation metrics beside their floor, the export table, the promotion decisions, links to the MLflow runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from imagegen.config import Params, load_params
from pipelines import dvc_runs, mlflow_parent, summaries
from pipelines.dvc_graph import read_stages, with_upstream

# DVC decides what is stale; Prefect caching would be a second, disagreeing opinion. Tasks take and
# return paths and small JSON-able values only (Prefect hashes task inputs).
TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "retries": 0}


@task(name="dvc-stage", task_run_name="{stage}", **TASK_OPTIONS)
def dvc_stage(stage: str, root: str, env: dict[str, str]) -> str:
    """One DVC stage, brought up to date by ``dvc repro --single-item`` (a no-op when nothing changed)."""
    logger = get_run_logger()
    tags = {
        **json.loads(env[mlflow_parent.TAGS_ENV]),
        "dvc.stage": stage,
        "dvc.lock_md5": dvc_runs.lock_md5(Path(root)),
    }
    stage_env = dvc_runs.stage_env({**env, mlflow_parent.TAGS_ENV: json.dumps(tags, sort_keys=True)})
    dvc_runs.repro_stage(stage, Path(root), stage_env, logger.info)
    return stage


@task(name="dvc-experiment", task_run_name="exp-run-{name}", **TASK_OPTIONS)
def dvc_experiment(name: str, overrides: list[str], targets: list[str], root: str, env: dict[str, str]) -> str:
    """The stages with ``-S`` overrides as DVC experiment ``name``; returns the experiment's git ref."""
    logger = get_run_logger()
    tags = {
        **json.loads(env[mlflow_parent.TAGS_ENV]),
        "dvc.lock_md5": dvc_runs.lock_md5(Path(root)),
    }
    stage_env = dvc_runs.stage_env({**env, mlflow_parent.TAGS_ENV: json.dumps(tags, sort_keys=True)})
    dvc_runs.experiment_run(name, overrides, targets, Path(root), stage_env, logger.info)
    return dvc_runs.experiment_ref(name, Path(root))


@task(name="promote", task_run_name="promote-{registered}", **TASK_OPTIONS)
def promote_model(registered: str, params: Params) -> dict[str, Any]:
    """The promotion decision: ``champion`` moves to the challenger only when the gate passes."""
    from imagegen.registry import promote

    d = promote(params, registered)
    verdict = "promoted" if d.promoted else "refused"
    get_run_logger().info("%s v%s: %s: %s", registered, d.version, verdict, d.reason)
    return {
        "registered": registered,
        "version": d.version,
        "promoted": d.promoted,
        "reason": d.reason,
        "previous_champion": d.previous_champion,
    }


def _json(root: Path, path: Path, rev: str | None) -> dict[str, Any] | None:
    text = dvc_runs.read_text(root, path, rev)
    return None if text is None else json.loads(text)


def _tracking_uri(params: Params, root: Path) -> str | None:
    """The store the stages log to, resolved as ``imagegen.tracking`` does but for the project folder."""
    if not params.tracking.enabled:
        return None
    from imagegen.tracking import default_tracking_uri

    return params.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


@flow(name="imagegen-pipeline", log_prints=True)
def imagegen_pipeline(
    overrides: list[str] | None = None,
    stages: list[str] | None = None,
    promote: bool = True,
    project_dir: str = ".",
) -> dict[str, Any]:
    """Run ``dvc.yaml``'s stages (``stages``: these and their upstream; default all), then decide promotions.

    ``overrides`` (``key=value`` as for ``dvc exp run -S``) make the run a DVC experiment named
    ``prefect-<flow run id>``; without them the workspace is reproduced like ``dvc repro``. Returns the
    stages run, the experiment (or ``workspace``), the promotion decisions and the MLflow parent run id.
    """
    from imagegen.registry import git_commit

    root = Path(project_dir).resolve()
    overrides = list(overrides or [])
    params = load_params(root / "params.yaml", overrides)  # bad params fail here, before any work
    logger = get_run_logger()
    plan = with_upstream(read_stages(root), stages)
    flow_run_id = str(runtime.flow_run.id or "local")
    experiment = f"prefect-{flow_run_id[:8]}" if overrides else "workspace"
    tags = {
        "prefect.flow_run_id": flow_run_id,
        "prefect.flow_run_name": str(runtime.flow_run.name or ""),
        "dvc.experiment": experiment,
        "dvc.lock_md5": dvc_runs.lock_md5(root),
        "pipeline.overrides": json.dumps(overrides),
        "git.commit": git_commit(root),
    }
    tracking_uri = _tracking_uri(params, root)
    if tracking_uri is not None:
        params.tracking.uri = tracking_uri  # promotion talks to the same store as the stages
    parent = None
    if tracking_uri is not None:
        parent = mlflow_parent.start_parent(
            tracking_uri,
            params.tracking.experiment,
            f"pipeline-{experiment}-{flow_run_id[:8]}",
            {**tags, "imagegen.stage": "pipeline"},
        )
        logger.info("MLflow parent run %s in %s", parent.run_id, tracking_uri)
    env = mlflow_parent.child_env(parent, tags)
    names = [s.name for s in plan]
    logger.info("stages from dvc.yaml, in order: %s", ", ".join(names))

    ok, texts = False, {}
    try:
        rev = None
        if overrides:
            rev = dvc_experiment(experiment, overrides, list(stages or []), str(root), env)
        else:
            for name in names:  # one at a time: a stage may use the whole machine
                dvc_stage(name, str(root), env)
        decisions = _promotions(params, plan, root, rev) if promote and tracking_uri else {}
        texts = _publish(params, plan, root, rev, decisions, parent)
        ok = True
    finally:
        if parent is not None:
            end_tags = {"dvc.lock_md5.end": dvc_runs.lock_md5(root)}
            mlflow_parent.finish_parent(parent, ok, end_tags, texts)
    if not overrides:
        status = dvc_runs.run_dvc(["status"], root, dvc_runs.stage_env({}), lambda line: None)
        logger.info("dvc status after the run:\n%s", status)
    return {
        "stages": names,
        "experiment": experiment,
        "experiment_ref": rev,
        "promotions": decisions,
        "mlflow_parent_run_id": None if parent is None else parent.run_id,
    }


def _promotions(params: Params, plan: list, root: Path, rev: str | None) -> dict[str, dict[str, Any]]:
    """A promotion decision for every shipped model whose register stage is part of this run."""
    ran = {s.name for s in plan}
    decisions = {}
    for name in params.export.ship:
        record = _json(root, params.train.reports_dir / f"register_{name}.json", rev)
        if f"register@{name}" in ran and record is not None:
            decisions[name] = promote_model(record["name"], params)
    return decisions


def _publish(
    params: Params,
    plan: list,
    root: Path,
    rev: str | None,
    decisions: dict[str, dict[str, Any]],
    parent: mlflow_parent.ParentRun | None,
) -> dict[str, str]:
    """The run's Prefect artifacts (and the same markdown for the MLflow parent run)."""
    ran = {s.name for s in plan}
    reports = params.train.reports_dir
    where = "workspace" if rev is None else f"DVC experiment `{rev}`"
    evaluations = {
        name: _json(root, reports / f"evaluate_{name}" / "metrics.json", rev)
        for name in params.evaluate.models
        if f"evaluate@{name}" in ran
    }
    exports = {
        name: _json(root, reports / f"export_{name}" / "metrics.json", rev)
        for name in params.export.ship
        if f"export@{name}" in ran
    }
    texts: dict[str, str] = {}
    if evaluations:
        texts["evaluation.md"] = summaries.evaluation_table(evaluations) + f"\n\nfrom the {where}"
    if exports:
        texts["export.md"] = summaries.export_table(exports) + f"\n\nfrom the {where}"
    if decisions:
        links = {
            n: parent.model_version_url(d["registered"], d["version"]) if parent else None for n, d in decisions.items()
        }
        texts["promotion.md"] = summaries.promotion_table(decisions, links)
    if parent is not None:
        me = {"name": "pipeline", "run_id": parent.run_id, "url": parent.url()}
        texts["mlflow_runs.md"] = summaries.runs_table(me, mlflow_parent.child_runs(parent), parent.tracking_uri)
    for name, text in texts.items():
        key = "imagegen-" + name.removesuffix(".md").replace("_", "-")
        create_markdown_artifact(markdown=text, key=key, description=f"imagegen pipeline: {key}")
    return texts


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(json.dumps(imagegen_pipeline(overrides=sys.argv[1:]), indent=2, default=str))
