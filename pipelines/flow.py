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


ALL_FAMILIES = ("dcgan", "vae", "ddpm")


@flow(name="imagegen-pipeline", log_prints=True)
def imagegen_pipeline(
    params_path: str | None = "params.yaml",
    overrides: list[str] | None = None,
    families: list[str] | None = None,
    evaluate: bool = True,
) -> dict[str, str]:
    """Run the pipeline's stages in dvc.yaml's order; returns ``{stage: output path}``.

    ``families`` picks which ``train_<family>`` stages run (default: all three); ``evaluate`` adds
    ``train_features`` and ``evaluate@<family>`` for each trained family.
    """
    overrides = list(overrides or [])
    families = list(ALL_FAMILIES if families is None else families)
    unknown = sorted(set(families) - set(ALL_FAMILIES))
    if unknown:
        raise ValueError(f"families: unknown {unknown}; expected a subset of {list(ALL_FAMILIES)}")
    if params_path is not None and not Path(params_path).exists():
        params_path = None  # fall back to built-in defaults, like the CLI
    outputs: dict[str, str] = {}
    outputs["ingest"] = ingest_task(params_path, overrides)
    for family in families:  # one at a time: each may use the whole machine
        outputs[f"train_{family}"] = train_task(family, params_path, overrides, outputs["ingest"])
    if evaluate and families:
        outputs["train_features"] = train_features_task(params_path, overrides, outputs["ingest"])
        for family in families:
            outputs[f"evaluate_{family}"] = evaluate_task(
                family, params_path, overrides, outputs[f"train_{family}"], outputs["ingest"], outputs["train_features"]
            )
    return outputs


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(imagegen_pipeline(overrides=sys.argv[1:]))
