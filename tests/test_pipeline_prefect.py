"""The Prefect flow runs the same stage functions for real, against a real (temporary) Prefect server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_prefect_server_app_imports() -> None:
    """A bad fastapi pin breaks `prefect server start` at import time; this catches it in CI."""
    import prefect.server.api.server as server

    assert callable(server.create_app)


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_flow_runs_every_stage_and_ends_with_a_promotion_decision(prefect_server, tmp_path: Path, monkeypatch) -> None:
    """ingest -> train (own process) -> train_features -> evaluate -> export -> register -> promote, for a tiny VAE,
    against a real MLflow store; the first version registered becomes champion (there is none before it)."""
    from pipelines.flow import imagegen_pipeline

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny = ["data.image_size=8", "vae.steps=3", "vae.base_filters=4", "train.batch_size=16", "train.jit_compile=false",
            "evaluate.feature_epochs=1", "evaluate.feature_width=8", "evaluate.n_samples=64",
            "evaluate.kid_subset_size=32", "evaluate.kid_subsets=5", "export.ship={vae: models/vae}", "export.parity_n=4",
            "export.latency_repeats=2", "export.tflite_variants=[float32]"]
    state = imagegen_pipeline(
        params_path=None,
        overrides=[f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"data.processed_dir={tmp_path / 'processed'}",
                   *tiny],
        families=["vae"],
        return_state=True,
    )
    assert state.is_completed(), state
    outputs = state.result()
    manifest = json.loads((Path(outputs["ingest"]) / "manifest.json").read_text())
    assert manifest["dataset"] == "digits"
    assert sum(manifest["counts"].values()) == 1797
    model = json.loads((Path(outputs["train_vae"]) / "model.json").read_text())
    assert model["family"] == "vae" and model["step"] == 3
    assert model["dataset"]["content_hash"] == manifest["content_hash"]
    evaluation = json.loads((Path(outputs["evaluate_vae"]) / "metrics.json").read_text())
    assert evaluation["n_generated"] == 64 and "fid" in evaluation["floor"]
    export = json.loads((Path(outputs["export_vae"]) / "metrics.json").read_text())
    assert sorted(export["artifacts"]) == ["float32", "savedmodel"]
    assert all(a["passed"] for a in export["artifacts"].values())
    assert outputs["register_vae"] == "imagegen-vae-digits"
    decision = outputs["promote_vae"]
    assert decision["promoted"] is True and "no champion yet" in decision["reason"], decision

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("imagegen-vae-digits", "champion")
    assert str(champion.version) == decision["version"]
    assert champion.tags["promotion.decision"] == "promoted"
    assert champion.tags["export.parity_passed"] == "true"


def test_flow_fails_with_the_params_message(prefect_server, tmp_path: Path, monkeypatch) -> None:
    from imagegen.errors import ConfigError
    from pipelines.flow import imagegen_pipeline

    monkeypatch.chdir(tmp_path)
    state = imagegen_pipeline(params_path=None, overrides=["train.batch_size=-3"], families=[], return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="train.batch_size"):
        state.result()
