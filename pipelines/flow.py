"""The imagegen pipeline as a Prefect flow, derived from ``dvc.yaml``.

The flow has no stage list of its own: it reads the stages and their order from DVC
(:mod:`pipelines.dvc_graph`) and runs one Prefect task per stage, each ``dvc repro --single-item <stage>``
in the project folder. A Prefect run therefore leaves ``dvc.lock``, the DVC cache and ``dvc status``
exactly as ``dvc repro`` would. Overrides (``-S key=value``) run as a DVC experiment
(``dvc exp run --temp --name prefect-<id>``), recorded where ``dvc exp show`` finds them and never written
over the tracked ``params.yaml``. Prefect adds what DVC lacks: schedules, workers, a concurrency limit
(``prefect.yaml``), logs and artifacts.

The flow then decides the promotion of every shipped model (``export.ship``) and publishes artifacts:
evaluation metrics beside their floor, the export table, the workspace's models side by side with whether each
report names the weights in its folder (``imagegen compare``), the promotion decisions, links to the MLflow runs.
Last, with a git remote configured (``pipeline.publish`` or the ``publish`` parameter), it publishes the run
as a DVC experiment with its outputs (:mod:`pipelines.publish`) and says so in the ``imagegen-publish``
artifact.

Every DVC command first waits for another process's DVC lock (``pipeline.lock_timeout_s``, naming the
holder); a stage's output reaches the Prefect logs as it comes, progress bars as a line every
``pipeline.progress_every_s``; a failing stage is one ERROR line, its cause (:mod:`pipelines.stage_log`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from imagegen.config import Params, PublishConfig, load_params
from imagegen.errors import ConfigError, ImagegenError
from pipelines import dvc_runs, mlflow_parent, summaries
from pipelines import publish as publishing
from pipelines.dvc_graph import read_stages, with_upstream

# DVC decides what is stale; Prefect caching would be a second, disagreeing opinion. Tasks take and
# return paths and small JSON-able values only (Prefect hashes task inputs).
TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "retries": 0}


class OneLineFailures(logging.Filter):
    """Prefect logs a failed task's and flow's exception at ERROR with its traceback. For imagegen's own errors
    (a failed stage, DVC's lock held too long, bad params) the message is the whole story and it is already
    logged at ERROR, so Prefect's record of it moves to DEBUG, traceback included."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ImagegenError) and record.levelno >= logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def one_line_failures() -> None:
    """Install :class:`OneLineFailures` on Prefect's task-run and flow-run loggers (once per process)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineFailures) for f in logger.filters):
            logger.addFilter(OneLineFailures())


def _stage_env(env: dict[str, str], root: str, **tags: str) -> dict[str, str]:
    """The environment of one DVC command: the run's tags plus ``tags`` and the ``dvc.lock`` it starts from."""
    merged = {**json.loads(env[mlflow_parent.TAGS_ENV]), **tags, "dvc.lock_md5": dvc_runs.lock_md5(Path(root))}
    return dvc_runs.stage_env({**env, mlflow_parent.TAGS_ENV: json.dumps(merged, sort_keys=True)})


def _fail(logger: dvc_runs.Logger, what: str, exc: ImagegenError) -> None:
    """A failure as one ERROR line (the cause); the command's last output at DEBUG."""
    if isinstance(exc, dvc_runs.DvcCommandFailed):
        logger.error("%s failed: %s", what, exc.cause)
        logger.debug("last output of %s:\n%s", what, exc.output)
    else:
        logger.error("%s: %s", what, exc)


@task(name="dvc-stage", task_run_name="{stage}", **TASK_OPTIONS)
def dvc_stage(stage: str, root: str, env: dict[str, str], waiting: dict[str, float]) -> str:
    """One DVC stage, brought up to date by ``dvc repro --single-item`` (a no-op when nothing changed); the
    MLflow runs it started are then named after it."""
    logger = get_run_logger()
    stage_env = _stage_env(env, root, **{"dvc.stage": stage})
    try:
        dvc_runs.repro_stage(stage, Path(root), stage_env, logger, dvc_runs.Waiting(**waiting))
    except ImagegenError as exc:
        _fail(logger, f"stage {stage}", exc)
        raise
    finally:
        _name_runs(stage_env, stage, logger)
    return stage


def _name_runs(env: dict[str, str], stage: str, logger: dvc_runs.Logger) -> None:
    """The stage's MLflow runs named after the DVC stage; a store that fails here only costs the names."""
    try:
        mlflow_parent.name_stage_runs(env, stage)
    except Exception as exc:  # the stage's result stands either way
        logger.warning("MLflow runs of %s keep their names: %s: %s", stage, type(exc).__name__, exc)


@task(name="dvc-experiment", task_run_name="exp-run-{name}", **TASK_OPTIONS)
def dvc_experiment(
    name: str, overrides: list[str], targets: list[str], root: str, env: dict[str, str], waiting: dict[str, float]
) -> str:
    """The stages with ``-S`` overrides as DVC experiment ``name``; returns the experiment's git ref."""
    logger = get_run_logger()
    try:
        dvc_runs.experiment_run(
            name, overrides, targets, Path(root), _stage_env(env, root), logger, dvc_runs.Waiting(**waiting)
        )
    except ImagegenError as exc:
        _fail(logger, f"experiment {name}", exc)
        raise
    return dvc_runs.experiment_ref(name, Path(root))


@task(name="promote", task_run_name="promote-{registered}", **TASK_OPTIONS)
def promote_model(registered: str, params: Params) -> dict[str, Any]:
    """The promotion decision: ``champion`` moves to the challenger only when the gate passes."""
    from imagegen.registry import promote

    d = promote(params, registered)
    decision = {
        "registered": registered,
        "version": d.version,
        "promoted": d.promoted,
        "changed": d.changed,
        "reason": d.reason,
        "previous_champion": d.previous_champion,
    }
    get_run_logger().info("%s v%s: %s: %s", registered, d.version, summaries.promotion_verdict(decision), d.reason)
    return decision


@task(name="publish", task_run_name="publish-{name}", **TASK_OPTIONS)
def publish_run(
    name: str,
    ref: str | None,
    stages: list[str],
    message: str,
    publish: dict[str, str | None],
    root: str,
    waiting: dict[str, float],
) -> dict[str, Any]:
    """The run as DVC experiment ``name`` (saved here unless ``ref`` says it already is one), pushed to the git
    remote with its outputs to the DVC remote; the worker's folder back at ``HEAD``."""
    logger = get_run_logger()
    cfg = PublishConfig.model_validate(publish)
    try:
        done = publishing.publish_run(name, ref, stages, message, cfg, Path(root), logger, dvc_runs.Waiting(**waiting))
    except ImagegenError as exc:
        _fail(logger, f"publishing {name}", exc)
        raise
    logger.info(
        "published experiment %s (commit %s) to git remote %s and DVC remote %s; a clone gets it with "
        "`python -m pipelines.publish get %s` (dvc exp pull + dvc exp apply)",
        name,
        done.commit[:12],
        done.git_remote,
        done.dvc_remote,
        name,
    )
    return done.as_dict()


def _json(root: Path, path: Path, rev: str | None) -> dict[str, Any] | None:
    text = dvc_runs.read_text(root, path, rev)
    return None if text is None else json.loads(text)


def _export_report(root: Path, folder: Path, rev: str | None) -> dict[str, Any] | None:
    """An export's tracked ``metrics.json`` with the latencies of its untracked ``run.json`` put back into each
    artifact's entry, when this folder holds that file (a run in the workspace; an experiment's is not kept)."""
    report = _json(root, folder / "metrics.json", rev)
    timing = _json(root, folder / "run.json", None) if report is not None and rev is None else None
    if report is None or not timing:
        return report
    artifacts = {
        name: {**entry, **timing.get("artifacts", {}).get(name, {})} for name, entry in report["artifacts"].items()
    }
    return {**report, "artifacts": artifacts}


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
    publish: PublishConfig | None = None,
    lock_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run ``dvc.yaml``'s stages (``stages``: these and their upstream; default all), decide promotions, then
    publish the run.

    ``overrides`` (``key=value`` as for ``dvc exp run -S``) make the run a DVC experiment named
    ``prefect-<flow run id>``; without them the workspace is reproduced like ``dvc repro``. ``publish``
    (default: params.yaml's ``pipeline.publish``) names the git remote and DVC remote the run goes to;
    ``lock_timeout_s`` (default ``pipeline.lock_timeout_s``) is how long a DVC command waits for another
    process's DVC lock. Returns the stages run, the experiment (or ``workspace``), the promotion decisions,
    what was published and the MLflow parent run id.
    """
    from imagegen.registry import git_commit

    one_line_failures()
    root = Path(project_dir).resolve()
    overrides = list(overrides or [])
    params = load_params(root / "params.yaml", overrides)  # bad params fail here, before any work
    target = _publish_config(publish, params)
    publishing.check_target(root, target)  # a remote that is not there fails here too
    waiting = _waiting(params, lock_timeout_s)
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

    ok, texts, end_tags, published = False, {}, {}, None
    try:
        rev = None
        if overrides:
            rev = dvc_experiment(experiment, overrides, list(stages or []), str(root), env, asdict(waiting))
        else:
            for name in names:  # one at a time: a stage may use the whole machine
                dvc_stage(name, str(root), env, asdict(waiting))
        end_tags["dvc.lock_md5.end"] = dvc_runs.lock_md5(root)
        decisions = _promotions(params, plan, root, rev) if promote and tracking_uri else {}
        texts = _report(params, plan, root, rev, decisions, parent)
        if not overrides:
            status = dvc_runs.run_dvc(["status"], root, dvc_runs.stage_env({}), logger, waiting, quiet=True)
            logger.info("dvc status after the run:\n%s", status)
        name = experiment if overrides else publishing.experiment_name(flow_run_id, _run_date())
        published = _publish(name, rev, names, target, root, waiting, tags)
        texts["publish.md"] = summaries.publish_text(published, publishing.not_configured(target))
        _artifact("publish.md", texts["publish.md"])
        if published is not None:
            end_tags.update({"dvc.published": published["experiment"], "dvc.published_commit": published["commit"]})
        ok = True
    finally:
        if parent is not None:
            end_tags.setdefault("dvc.lock_md5.end", dvc_runs.lock_md5(root))
            mlflow_parent.finish_parent(parent, ok, end_tags, texts)
    return {
        "stages": names,
        "experiment": experiment,
        "experiment_ref": rev,
        "promotions": decisions,
        "published": published,
        "mlflow_parent_run_id": None if parent is None else parent.run_id,
    }


def _publish_config(publish: PublishConfig | dict[str, Any] | None, params: Params) -> PublishConfig:
    """The flow's ``publish`` parameter, else params.yaml's ``pipeline.publish``."""
    if publish is None:
        return params.pipeline.publish
    return publish if isinstance(publish, PublishConfig) else PublishConfig.model_validate(publish)


def _waiting(params: Params, lock_timeout_s: float | None) -> dvc_runs.Waiting:
    """How long DVC commands wait for another process's lock (the parameter, else params) and how often a
    running stage's progress is logged."""
    timeout = params.pipeline.lock_timeout_s if lock_timeout_s is None else float(lock_timeout_s)
    if timeout < 0:
        raise ConfigError(f"lock_timeout_s: expected seconds >= 0, got {lock_timeout_s}")
    return dvc_runs.Waiting(timeout, params.pipeline.progress_every_s)


def _run_date() -> datetime:
    """The day the run was due (a nightly run that started late keeps its night), else today (UTC)."""
    try:
        scheduled = runtime.flow_run.scheduled_start_time
    except Exception:  # no API to ask (a flow called as a function)
        scheduled = None
    return scheduled.astimezone(UTC) if isinstance(scheduled, datetime) else datetime.now(UTC)


def _publish(
    name: str,
    rev: str | None,
    names: list[str],
    target: PublishConfig,
    root: Path,
    waiting: dvc_runs.Waiting,
    tags: dict[str, str],
) -> dict[str, Any] | None:
    """The run published as experiment ``name``, or None (one log line saying what to configure)."""
    skipped = publishing.not_configured(target)
    if skipped is not None:
        get_run_logger().info("%s", skipped)
        return None
    message = (
        f"{name}: imagegen pipeline run {tags['prefect.flow_run_name']} (Prefect flow run "
        f"{tags['prefect.flow_run_id']}), stages {', '.join(names)}"
    )
    return publish_run(name, rev, names, message, target.model_dump(), str(root), asdict(waiting))


def _promotions(params: Params, plan: list, root: Path, rev: str | None) -> dict[str, dict[str, Any]]:
    """A promotion decision for every shipped model whose register stage is part of this run."""
    ran = {s.name for s in plan}
    decisions = {}
    for name in params.export.ship:
        record = _json(root, params.train.reports_dir / f"register_{name}.json", rev)
        if f"register@{name}" in ran and record is not None:
            decisions[name] = promote_model(record["name"], params)
    return decisions


def _report(
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
        name: _export_report(root, reports / f"export_{name}", rev)
        for name in params.export.ship
        if f"export@{name}" in ran
    }
    texts: dict[str, str] = {}
    if evaluations:
        texts["evaluation.md"] = summaries.evaluation_table(evaluations) + f"\n\nfrom the {where}"
    if exports:
        texts["export.md"] = summaries.export_table(exports) + f"\n\nfrom the {where}"
    if rev is None:  # the workspace's models (an experiment's weights are not in the workspace)
        from imagegen.comparison import as_markdown, model_rows

        texts["models.md"] = "## Models side by side\n\n" + as_markdown(model_rows(params, root))
    if decisions:
        links = {
            n: parent.model_version_url(d["registered"], d["version"]) if parent else None for n, d in decisions.items()
        }
        texts["promotion.md"] = summaries.promotion_table(decisions, links)
    if parent is not None:
        me = {"name": "pipeline", "run_id": parent.run_id, "url": parent.url()}
        texts["mlflow_runs.md"] = summaries.runs_table(me, mlflow_parent.child_runs(parent), parent.tracking_uri)
    for name, text in texts.items():
        _artifact(name, text)
    return texts


def _artifact(name: str, text: str) -> None:
    """A markdown artifact keyed ``imagegen-<name>`` (``mlflow_runs.md`` -> ``imagegen-mlflow-runs``)."""
    key = "imagegen-" + name.removesuffix(".md").replace("_", "-")
    create_markdown_artifact(markdown=text, key=key, description=f"imagegen pipeline: {key}")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.flow [key=value ...] [--stages S ...] [--lock-timeout-s N]``: one run of the
    flow from this folder; a failure is one line on stderr (exit 2), as for the ``imagegen`` command."""
    ap = argparse.ArgumentParser(prog="python -m pipelines.flow", description=main.__doc__)
    ap.add_argument("overrides", nargs="*", help="key=value, as for `dvc exp run -S`: the run is a DVC experiment")
    ap.add_argument("--stages", nargs="+", default=None, help="these stages and their upstream (default: all)")
    ap.add_argument("--lock-timeout-s", type=float, default=None, help="wait for DVC's lock (default: params)")
    args = ap.parse_args(argv)
    try:
        out = imagegen_pipeline(overrides=args.overrides, stages=args.stages, lock_timeout_s=args.lock_timeout_s)
    except ImagegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
