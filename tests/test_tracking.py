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
    with (
        pytest.raises(RuntimeError),
        start_run(TrackingConfig(uri=uri), "boom", stage="test") as run,
    ):
        run_id = run.run_id
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=uri).get_run(run_id).info.status == "FAILED"


# --------------------------------------------------------------------------------------------------
# Provenance, parent runs and the dataset input


def test_every_run_records_git_commit_dvc_lock_and_the_orchestrators_parent_and_tags(
    monkeypatch, tmp_path: Path
) -> None:
    import hashlib

    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent_exp = client.create_experiment("pipeline-runs")
    parent = client.create_run(parent_exp, run_name="pipeline").info.run_id
    monkeypatch.setenv("IMAGEGEN_MLFLOW_PARENT_RUN_ID", parent)
    monkeypatch.setenv("IMAGEGEN_RUN_TAGS", json.dumps({"prefect.flow_run_id": "fr-1", "dvc.experiment": "x"}))

    with start_run(TrackingConfig(uri=uri), "child", stage="test") as run:
        run_id = run.run_id
    child = client.get_run(run_id)
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == parent and child.info.experiment_id == parent_exp
    assert tags["prefect.flow_run_id"] == "fr-1" and tags["dvc.experiment"] == "x"
    assert tags["dvc.lock_md5"] == hashlib.md5((tmp_path / "dvc.lock").read_bytes()).hexdigest()
    assert len(tags["git.commit"]) == 40  # the checkout imagegen runs from


def test_bad_run_tags_or_a_missing_parent_are_one_line_errors(monkeypatch, tmp_path: Path) -> None:
    from imagegen.errors import ImagegenError

    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("IMAGEGEN_RUN_TAGS", "[1, 2]")
    with (
        pytest.raises(ImagegenError, match="IMAGEGEN_RUN_TAGS: expected a JSON object"),
        start_run(cfg, "x", stage="test"),
    ):
        pass
    monkeypatch.delenv("IMAGEGEN_RUN_TAGS")
    monkeypatch.setenv("IMAGEGEN_MLFLOW_PARENT_RUN_ID", "0" * 32)
    with (
        pytest.raises(ImagegenError, match="parent run 0{32}.*does not exist"),
        start_run(cfg, "x", stage="test"),
    ):
        pass


def test_a_training_run_logs_its_dataset_as_an_mlflow_input(monkeypatch, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from imagegen.stages.ingest import run_ingest
    from imagegen.stages.train import run_train

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("IMAGEGEN_MLFLOW_PARENT_RUN_ID", raising=False)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    p = load_params(
        None,
        [
            f"tracking.uri={uri}",
            "data.image_size=8",
            "vae.steps=2",
            "vae.base_filters=4",
            "train.batch_size=16",
            "train.jit_compile=false",
            f"data.processed_dir={tmp_path / 'd'}",
            f"train.checkpoints_dir={tmp_path / 'c'}",
            f"train.reports_dir={tmp_path / 'r'}",
        ],
    )
    data = run_ingest(p)
    run_train(p, "vae", data_dir=data, out_dir=tmp_path / "vae", show_progress=False)
    manifest = json.loads((data / "manifest.json").read_text())
    run_id = json.loads((tmp_path / "r" / "train_vae" / "run.json").read_text())["mlflow_run_id"]

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == manifest["dataset"]
    assert dataset_input.dataset.digest == manifest["content_hash"].split(":")[1][:32]
    assert str(data.resolve()) in dataset_input.dataset.source
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags["mlflow.data.context"] == "training" and tags["imagegen.content_hash"] == manifest["content_hash"]


def test_a_broken_sqlite_store_is_named_before_mlflow_touches_it(tmp_path: Path) -> None:
    from imagegen.tracking import TrackingStoreError

    db = tmp_path / "mlflow.db"
    db.write_text("this is not a database, it is a note\n" * 10)
    cfg = TrackingConfig(uri=f"sqlite:///{db}")
    with (
        pytest.raises(TrackingStoreError, match=f"{db}: not an SQLite database"),
        start_run(cfg, "x", stage="test"),
    ):
        pass
    assert db.read_text().startswith("this is not a database")
