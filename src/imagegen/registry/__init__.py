"""MLflow model registry: register a model version as ``challenger``; promote it to ``champion`` through a gate.

Registry stages are deprecated since MLflow 2.9; this uses aliases. The gate compares evaluation metrics stored
as tags on each version, so every decision can be re-read later (``promotion.*`` tags on the version).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen.config import Params
from imagegen.errors import ImagegenError
from imagegen.tracking import finite_metrics, resolve_tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"


class PromotionRefused(ImagegenError):
    """The gate said no; the message says why."""


@dataclass
class Decision:
    name: str
    version: str
    promoted: bool
    reason: str
    previous_champion: str | None


def registered_name(params: Params, family: str, dataset: str) -> str:
    return params.registry.name_template.format(family=family, dataset=dataset)


def registry_family(meta: dict[str, Any]) -> str:
    """``ddpm``, or ``ddpm-student`` for a distilled model: a student competes with earlier students, not with
    its teacher (it trades some quality for speed by design)."""
    return f"{meta['family']}-student" if meta.get("distillation") else str(meta["family"])


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def client_for(params: Params) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_tracking_uri(params.tracking), registry_uri=resolve_tracking_uri(params.tracking))


def register(
    params: Params,
    model_dir: Path,
    evaluation: dict[str, Any],
    export_report: dict[str, Any] | None = None,
    run_id: str | None = None,
    export_dir: Path | None = None,
) -> tuple[str, str]:
    """Log ``model_dir`` as a pyfunc in a run, register a new version, alias it ``challenger``; return (name, version)."""
    import json

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature

    from imagegen.registry.pyfunc import ImagegenModel
    from imagegen.sampling import generate_images

    meta = json.loads((Path(model_dir) / "model.json").read_text())
    family, dataset = meta["family"], meta["dataset"]["name"]
    name = registered_name(params, registry_family(meta), dataset)
    uri = resolve_tracking_uri(params.tracking)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    example = pd.DataFrame({"n": [2], "seed": [0]})
    output = generate_images(Path(model_dir), 2, seed=0, show_progress=False, sampler="ddim", steps=2)[0]
    signature = infer_signature(example, output)
    mlflow.set_experiment(params.tracking.experiment)
    with mlflow.start_run(run_id=run_id, run_name=f"register-{family}") as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ImagegenModel(),
            artifacts={"model_dir": str(model_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=["imagegen", "keras>=3.8", "numpy", "pandas"],
        )
        mlflow.set_tags({"imagegen.stage": "register", "dataset.content_hash": meta["dataset"]["content_hash"]})
        if export_dir is not None:  # the deployable files travel with the version's run
            mlflow.log_artifacts(str(export_dir), artifact_path="export")
        if export_report is not None:
            mlflow.log_metrics(finite_metrics({"export": export_report.get("artifacts", {})}))
        version = mlflow.register_model(info.model_uri, name).version
    client = client_for(params)
    tags = {
        "family": family,
        "dataset": dataset,
        "dataset.content_hash": meta["dataset"]["content_hash"],
        "git.commit": git_commit(),
        "source.run_id": run.info.run_id,
    }
    for key in ("fid", "kid_mean", "precision", "recall", "coverage"):
        if key in evaluation and np.isfinite(evaluation[key]):
            tags[f"eval.{key}"] = repr(float(evaluation[key]))
    if export_report is not None:
        passed = all(a.get("passed", False) for a in export_report.get("artifacts", {}).values())
        tags["export.parity_passed"] = "true" if passed else "false"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return name, str(version)


def _alias(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def gate(params: Params, challenger: Any, champion: Any | None) -> tuple[bool, str]:
    """Whether ``challenger`` may replace ``champion``, and why (the reason is recorded on the version)."""
    key = f"eval.{params.registry.gate_metric}"
    margin = params.registry.min_improvement
    if challenger.tags.get("export.parity_passed") == "false":
        return False, f"version {challenger.version}: export parity failed"
    if key not in challenger.tags:
        return False, f"version {challenger.version} has no {key} tag: evaluate the model before registering it"
    new = float(challenger.tags[key])
    if champion is None:
        return True, f"no champion yet; {key}={new:.4g}"
    if champion.version == challenger.version:
        return False, f"version {challenger.version} is already the champion"
    old = float(champion.tags.get(key, "inf"))
    needed = old * (1.0 - margin)
    if new <= needed:
        return True, f"{key} {new:.4g} beats champion v{champion.version}'s {old:.4g} by >= {margin:.0%} (needed <= {needed:.4g})"
    return False, (
        f"{key} {new:.4g} is not better than champion v{champion.version}'s {old:.4g} by the required "
        f"{margin:.0%} (needed <= {needed:.4g}); champion unchanged"
    )


def promote(params: Params, name: str, force_reason: str | None = None) -> Decision:
    """Move ``champion`` to the current ``challenger`` if the gate passes (or ``force_reason`` is given)."""
    client = client_for(params)
    challenger = _alias(client, name, CHALLENGER)
    if challenger is None:
        raise ImagegenError(f"registered model {name!r} has no '{CHALLENGER}' version; run the register stage first")
    champion = _alias(client, name, CHAMPION)
    ok, reason = gate(params, challenger, champion)
    if not ok and force_reason:
        ok, reason = True, f"forced: {force_reason} (gate said: {reason})"
    client.set_model_version_tag(name, challenger.version, "promotion.decision", "promoted" if ok else "refused")
    client.set_model_version_tag(name, challenger.version, "promotion.reason", reason)
    if ok:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    return Decision(name, str(challenger.version), ok, reason, None if champion is None else str(champion.version))
