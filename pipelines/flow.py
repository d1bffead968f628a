"""The imagegen pipeline as a Prefect flow.

Each task loads the validated params and calls the same ``imagegen.stages`` function that the CLI (and so
``dvc.yaml``) calls. Tasks take and return paths and small JSON-able values, never models or tensors:
Prefect hashes task inputs for cache keys, and a Keras model there raises ``HashError``.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from imagegen.config import load_params
from pipelines.isolation import call_in_fresh_process

# DVC already decides what is stale; Prefect caching would be a second, disagreeing opinion.
STAGE_TASK_OPTIONS = {"cache_policy": NO_CACHE, "retries": 0}


@task(name="ingest", **STAGE_TASK_OPTIONS)
def ingest_task(params_path: str | None, overrides: list[str]) -> str:
    """Stage ``ingest``: raw dataset -> processed folder (returns its path)."""
    from imagegen.stages.ingest import run_ingest

    params = load_params(params_path, overrides)
    out = run_ingest(params)
    get_run_logger().info("ingested %s -> %s", params.data.name, out)
    return str(out)


@task(name="train", task_run_name="train_{family}", **STAGE_TASK_OPTIONS)
def train_task(family: str, params_path: str | None, overrides: list[str], data_dir: str) -> str:
    """Stage ``train_<family>``, in its own process (TensorFlow keeps GPU memory until its process exits)."""
    from imagegen.stages.train import run_train

    params = load_params(params_path, overrides)
    out = call_in_fresh_process(run_train, params, family, data_dir=Path(data_dir), show_progress=False)
    get_run_logger().info("trained %s -> %s", family, out)
    return str(out)


@task(name="train_features", **STAGE_TASK_OPTIONS)
def train_features_task(params_path: str | None, overrides: list[str], data_dir: str) -> str:
    """Stage ``train_features``: the evaluation feature extractor, in its own process."""
    from imagegen.stages.train_features import run_train_features

    params = load_params(params_path, overrides)
    return str(call_in_fresh_process(run_train_features, params, data_dir=Path(data_dir)))


@task(name="evaluate", task_run_name="evaluate_{family}", **STAGE_TASK_OPTIONS)
def evaluate_task(
    family: str, params_path: str | None, overrides: list[str], model_dir: str, data_dir: str, features_dir: str
) -> str:
    """Stage ``evaluate@<family>``: metrics.json, plots, grid and report under reports/evaluate_<family>."""
    from imagegen.stages.evaluate import run_evaluate

    params = load_params(params_path, overrides)
    out = params.train.reports_dir / f"evaluate_{family}"
    call_in_fresh_process(
        run_evaluate,
        params,
        out,
        model_dir=Path(model_dir),
        data_dir=Path(data_dir),
        features_dir=Path(features_dir),
        show_progress=False,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    get_run_logger().info(
        "%s: FID %.3f (floor %.3f), precision %.3f, recall %.3f",
        family, metrics["fid"], metrics["floor"]["fid"], metrics["precision"], metrics["recall"],
    )
    return str(out)


@task(name="distill", task_run_name="distill_{method}", **STAGE_TASK_OPTIONS)
def distill_task(method: str, params_path: str | None, overrides: list[str], teacher_dir: str) -> str:
    """Stage ``distill``: a DDPM teacher -> its student (returns the student's model folder), in its own process."""
    from imagegen.stages.distill import run_distill

    params = load_params(params_path, overrides)
    out = call_in_fresh_process(run_distill, params, Path(teacher_dir), method, show_progress=False)
    get_run_logger().info("distilled %s (%s) -> %s", teacher_dir, method, out)
    return str(out)


@task(name="export", task_run_name="export_{name}", **STAGE_TASK_OPTIONS)
def export_task(name: str, params_path: str | None, overrides: list[str], model_dir: str) -> str:
    """Stage ``export@<name>``: SavedModel + TFLite with parity checks, in its own process (TensorFlow)."""
    from imagegen.stages.export import run_export

    params = load_params(params_path, overrides)
    out = call_in_fresh_process(
        run_export, params, Path(model_dir), params.export.export_dir / name, params.train.reports_dir / f"export_{name}"
    )
    report = json.loads((Path(out) / "metrics.json").read_text())
    for variant, entry in report["artifacts"].items():
        get_run_logger().info(
            "%s %s: %.1f KiB, %.3f ms/image, max abs err %d, SSIM %.4f",
            name, variant, entry["bytes"] / 1024, entry["latency_ms_per_image"], entry["max_abs_error"], entry["ssim"],
        )
    return str(out)


@task(name="register", task_run_name="register_{name}", **STAGE_TASK_OPTIONS)
def register_task(
    name: str, params_path: str | None, overrides: list[str], model_dir: str, evaluation_dir: str, export_dir: str
) -> str:
    """Stage ``register@<name>``: a new registry version aliased ``challenger``; returns the registered name."""
    from imagegen.stages.register import run_register

    params = load_params(params_path, overrides)
    out = run_register(
        params,
        Path(model_dir),
        Path(evaluation_dir) / "metrics.json",
        Path(export_dir),
        params.train.reports_dir / f"register_{name}.json",
    )
    record = json.loads(out.read_text())
    get_run_logger().info("registered %s version %s as challenger", record["name"], record["version"])
    return str(record["name"])


@task(name="promote", task_run_name="promote_{registered}", **STAGE_TASK_OPTIONS)
def promote_task(registered: str, params_path: str | None, overrides: list[str]) -> dict[str, object]:
    """The promotion decision: ``champion`` moves to the challenger only when the gate passes."""
    from imagegen.registry import promote

    decision = promote(load_params(params_path, overrides), registered)
    get_run_logger().info(
        "%s v%s: %s: %s", registered, decision.version, "promoted" if decision.promoted else "refused", decision.reason
    )
    return {"version": decision.version, "promoted": decision.promoted, "reason": decision.reason}


ALL_FAMILIES = ("dcgan", "vae", "ddpm")
STUDENT = "ddpm_student"  # the progressively distilled DDPM: few steps, what is exported for phones


@flow(name="imagegen-pipeline", log_prints=True)
def imagegen_pipeline(
    params_path: str | None = "params.yaml",
    overrides: list[str] | None = None,
    families: list[str] | None = None,
    evaluate: bool = True,
    distill: bool = True,
    ship: bool = True,
) -> dict[str, object]:
    """Run the pipeline's stages in dvc.yaml's order; returns ``{stage: output path}`` and the promotion decisions.

    ``families`` picks which ``train_<family>`` stages run (default: all three). ``distill`` adds the
    progressive distillation of the DDPM (when it is trained). ``evaluate`` adds ``train_features`` and
    ``evaluate@<model>`` for each model; ``ship`` (needs ``evaluate``) exports, registers and finally decides the
    promotion of every model in ``export.ship`` that was built: ``{"promote_<name>": {"promoted", "reason", ...}}``.
    """
    overrides = list(overrides or [])
    families = list(ALL_FAMILIES if families is None else families)
    unknown = sorted(set(families) - set(ALL_FAMILIES))
    if unknown:
        raise ValueError(f"families: unknown {unknown}; expected a subset of {list(ALL_FAMILIES)}")
    if params_path is not None and not Path(params_path).exists():
        params_path = None  # fall back to built-in defaults, like the CLI
    params = load_params(params_path, overrides)  # fail fast, before any work, on bad params
    outputs: dict[str, object] = {}
    outputs["ingest"] = data = ingest_task(params_path, overrides)
    models: dict[str, str] = {}
    for family in families:  # one at a time: each may use the whole machine
        outputs[f"train_{family}"] = models[family] = train_task(family, params_path, overrides, data)
    if evaluate and models:  # before distill, whose report then carries teacher and student FIDs
        features = outputs["train_features"] = train_features_task(params_path, overrides, data)
    if distill and "ddpm" in models:
        outputs[f"distill_{STUDENT}"] = models[STUDENT] = distill_task("progressive", params_path, overrides, models["ddpm"])
    if not (evaluate and models):
        return outputs
    evaluations = {}
    for name, model_dir in models.items():
        outputs[f"evaluate_{name}"] = evaluations[name] = evaluate_task(
            name, params_path, overrides, model_dir, data, features
        )
    if not ship:
        return outputs
    for name in (n for n in params.export.ship if n in models):
        exported = outputs[f"export_{name}"] = export_task(name, params_path, overrides, models[name])
        registered = register_task(name, params_path, overrides, models[name], evaluations[name], exported)
        outputs[f"register_{name}"] = registered
        outputs[f"promote_{name}"] = promote_task(registered, params_path, overrides)
    return outputs


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(imagegen_pipeline(overrides=sys.argv[1:]))
