"""Tracking goes to a real MLflow store (a SQLite file), or nowhere when switched off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagegen.config import TrackingConfig, load_params
from imagegen.tracking import NullRun, resolve_tracking_uri, start_run


def test_uri_precedence(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri(TrackingConfig()) == "sqlite:///env.db"
    assert resolve_tracking_uri(TrackingConfig(uri="sqlite:///param.db")) == "sqlite:///param.db"


def test_disabled_tracking_touches_nothing(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    with start_run(TrackingConfig(enabled=False), "x", stage="test") as run:
        assert isinstance(run, NullRun)
        run.log_metrics({"a": 1.0}, step=1)
    assert list(tmp_path.iterdir()) == []


def test_ingest_logs_its_manifest_and_dataset_hash(monkeypatch, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from imagegen.stages.ingest import run_ingest

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = run_ingest(load_params(None, [f"data.processed_dir={tmp_path / 'p'}"]))
    manifest = json.loads((out / "manifest.json").read_text())

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (tmp_path / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("imagegen")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["imagegen.stage"] == "ingest"
    assert run.data.tags["dataset.content_hash"] == manifest["content_hash"]
    assert run.data.params["data.name"] == "digits"
    assert run.data.metrics["count.train"] == manifest["counts"]["train"]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "manifest.json" in artifacts


def test_a_failing_body_marks_the_run_failed(monkeypatch, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(RuntimeError), start_run(TrackingConfig(uri=uri), "boom", stage="test") as run:
        run_id = run.run_id
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "FAILED"
