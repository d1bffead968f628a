"""MLflow model registry: register a model version as ``challenger``; promote it to ``champion``
through a gate.

Registry stages are deprecated since MLflow 2.9; this uses aliases. The gate
(:mod:`imagegen.registry.gate`) reads evaluation metrics and the export's parity verdict stored as
tags on each version, so every decision can be re-read later (``promotion.*`` tags on the version).
Works the same on a SQLite file and on an ``mlflow server`` (the store is checked first: a dead
server or a broken file is one line naming it)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen.config import Params
from imagegen.errors import ImagegenError
from imagegen.provenance import DIGEST_KEY, weights_digest
from imagegen.registry.gate import EVAL_DIGEST_TAG, EXPORT_DIGEST_TAG, PARITY_TAG, gate
from imagegen.registry.lock import promote_lock
from imagegen.tracking import (
    finite_metrics,
    git_commit,
    open_store,
    resolve_tracking_uri,
    start_run,
    store_errors,
)

CHAMPION, CHALLENGER = "champion", "challenger"

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Decision",
    "PromotionRefused",
    "client_for",
    "gate",
    "git_commit",
    "promote",
    "register",
    "registered_name",
    "registry_family",
]


class PromotionRefused(ImagegenError):
    """The gate said no; the message says why."""


@dataclass
class Decision:
    name: str
    version: str
    promoted: bool  # the version is champion after this call
    reason: str
    previous_champion: str | None
    changed: bool = True  # False: it already was the champion, nothing was written


def registered_name(params: Params, family: str, dataset: str) -> str:
    return params.registry.name_template.format(family=family, dataset=dataset)


def registry_family(meta: dict[str, Any]) -> str:
    """``ddpm``, or ``ddpm-student`` for a distilled model: a student competes with earlier
    students, not with its teacher (it trades some quality for speed by design)."""
    return f"{meta['family']}-student" if meta.get("distillation") else str(meta["family"])


def _needs_tracking(params: Params, what: str) -> None:
    if not params.tracking.enabled:
        raise ImagegenError(
            f"tracking.enabled is false: the model registry lives in MLflow, so {what} needs tracking on"
        )


def client_for(params: Params) -> Any:
    """An MlflowClient (tracking and registry) on the checked store of ``params.tracking``."""
    return open_store(params.tracking)[0]


def eval_tags(evaluation: dict[str, Any]) -> dict[str, str]:
    """``eval.<metric>`` and ``eval.floor.<metric>`` for every number of an evaluation report;
    non-finite values are kept (``nan``, ``inf``) because they are what the gate must see to
    refuse."""
    tags: dict[str, str] = {}
    floor = evaluation.get("floor") if isinstance(evaluation.get("floor"), dict) else {}
    for prefix, tree in (("eval.", evaluation), ("eval.floor.", floor)):
        for key, value in tree.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = float(value)
                tags[f"{prefix}{key}"] = repr(number) if math.isfinite(number) else str(number)
    return tags


def training_collapse_tags(meta: dict[str, Any]) -> dict[str, str]:
    """What training's collapse checks said (``collapse`` in model.json), for whoever reads the
    version. Informational: the gate decides on the evaluation, which measures the samples the
    version makes."""
    collapse = meta.get("collapse")
    if not isinstance(collapse, dict):
        return {}
    problems = "; ".join(str(p) for p in collapse.get("problems", []))
    return {
        "train.collapse_warning": "true" if collapse.get("warning") else "false",
        **({"train.collapse_problems": problems[:5000]} if problems else {}),
    }


def parity_passed(export_report: dict[str, Any]) -> bool:
    artifacts = export_report.get("artifacts", {})
    return bool(artifacts) and all(a.get("passed", False) for a in artifacts.values())


def register(
    params: Params,
    model_dir: Path,
    evaluation: dict[str, Any],
    export_report: dict[str, Any] | None = None,
    export_dir: Path | None = None,
) -> tuple[str, str]:
    """Log ``model_dir`` as a pyfunc in a run, register a new version, alias it ``challenger``;
    return (name, version). The run is an ordinary ``imagegen.tracking`` run (a child of the
    pipeline's parent run, with its provenance tags)."""
    import tempfile

    import mlflow

    from imagegen.registry.model import log_pyfunc

    _needs_tracking(params, "register")
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    digest = str(meta[DIGEST_KEY])
    if weights_digest(model_dir, meta["weights"]) != digest:  # the files logged below are the ones measured
        raise ImagegenError(f"{model_dir}: its weights changed after model.json was written; train it again")
    family, dataset = meta["family"], meta["dataset"]["name"]
    name = registered_name(params, registry_family(meta), dataset)
    content_hash = meta["dataset"]["content_hash"]
    with start_run(
        params.tracking,
        run_name=f"register-{family}",
        stage="register",
        dataset_hash=content_hash,
        params={"model_dir": str(model_dir), "export_dir": str(export_dir or "")},
    ) as run:
        uri = run.tracking_uri
        with store_errors(uri), tempfile.TemporaryDirectory() as tmp:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            with mlflow.start_run(run_id=run.run_id):  # log_model logs into the active run
                info, requirements = log_pyfunc(Path(model_dir), params, Path(tmp))
                if export_dir is not None:  # the deployable files travel with the version's run
                    mlflow.log_artifacts(str(export_dir), artifact_path="export")
                if export_report is not None:
                    mlflow.log_metrics(finite_metrics({"export": export_report.get("artifacts", {})}))
                version = str(mlflow.register_model(info.model_uri, name).version)
        client = run.client
        tags = {
            "family": family,
            "dataset": dataset,
            "dataset.content_hash": content_hash,
            "git.commit": git_commit(),
            "source.run_id": run.run_id,
            "imagegen.requirements": "; ".join(requirements),
            DIGEST_KEY: digest,
            EVAL_DIGEST_TAG: str(evaluation.get(DIGEST_KEY, "none")),
            **eval_tags(evaluation),
        }
        if export_report is not None:
            tags[PARITY_TAG] = "true" if parity_passed(export_report) else "false"
            tags[EXPORT_DIGEST_TAG] = str(export_report.get(DIGEST_KEY, "none"))
        tags.update(training_collapse_tags(meta))
        with store_errors(uri):
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
            client.set_registered_model_alias(name, CHALLENGER, version)
    return name, version


def _alias(client: Any, name: str, alias: str) -> Any | None:
    """The version behind ``alias`` of ``name``, None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def promote(params: Params, name: str, force_reason: str | None = None) -> Decision:
    """Move ``champion`` to the current ``challenger`` if the gate passes (or ``force_reason`` is
    given).

    Idempotent: when the challenger already is the champion nothing is written. Promotes of one
    model are serialised (:mod:`imagegen.registry.lock`), so two at once leave one consistent state.
    """
    _needs_tracking(params, "promote")
    client, uri = open_store(params.tracking)
    with promote_lock(uri, name, params.registry.lock_timeout_s), store_errors(uri):
        challenger = _alias(client, name, CHALLENGER)
        if challenger is None:
            raise ImagegenError(
                f"registered model {name!r} has no '{CHALLENGER}' version in {uri}; run the register stage first"
            )
        version = str(challenger.version)
        champion = _alias(client, name, CHAMPION)
        previous = None if champion is None else str(champion.version)
        if previous == version:
            return Decision(
                name,
                version,
                True,
                f"version {version} is already the champion; nothing changed",
                previous,
                changed=False,
            )
        ok, reason = gate(
            params.registry,
            version,
            challenger.tags,
            previous,
            None if champion is None else champion.tags,
        )
        if not ok and force_reason:
            ok, reason = True, f"forced: {force_reason} (gate said: {reason})"
        # Tags first, then the alias: a champion always carries the decision that made it one.
        client.set_model_version_tag(name, version, "promotion.decision", "promoted" if ok else "refused")
        client.set_model_version_tag(name, version, "promotion.reason", reason)
        client.set_model_version_tag(name, version, "promotion.previous_champion", previous or "none")
        if ok:
            client.set_registered_model_alias(name, CHAMPION, version)
    return Decision(name, version, ok, reason, previous)


def tracking_uri(params: Params) -> str:
    """The store the registry uses (the tracking store)."""
    return resolve_tracking_uri(params.tracking)
