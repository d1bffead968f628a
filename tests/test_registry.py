"""The MLflow model registry on a real SQLite store: versions, the promotion gate, loading the champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imagegen.config import load_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagegen.stages.ingest import run_ingest
    from imagegen.stages.train import run_train

    root = tmp_path_factory.mktemp("reg")
    p = load_params(None, ["tracking.enabled=false", "data.image_size=8", "vae.steps=3", "vae.base_filters=4",
                           "train.batch_size=16", "train.jit_compile=false", f"data.processed_dir={root / 'd'}",
                           f"train.checkpoints_dir={root / 'c'}", f"train.reports_dir={root / 'r'}"])
    return run_train(p, "vae", data_dir=run_ingest(p), out_dir=root / "vae", show_progress=False)


def test_the_gate_refuses_a_worse_model_and_promotes_a_better_one(trained, tmp_path, monkeypatch) -> None:
    import mlflow.pyfunc
    import pandas as pd

    from imagegen.registry import CHAMPION, client_for, promote, register

    monkeypatch.chdir(tmp_path)
    params = load_params(None, [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    name, v1 = register(params, trained, {"fid": 5.0, "kid_mean": 0.01}, {"artifacts": {"f32": {"passed": True}}})
    assert name == "imagegen-vae-digits"
    first = promote(params, name)
    assert first.promoted and "no champion yet" in first.reason

    _, v2 = register(params, trained, {"fid": 5.0 * 0.99})  # better, but by less than the 2% margin
    refused = promote(params, name)
    assert not refused.promoted
    assert f"champion v{v1}" in refused.reason and "not better" in refused.reason and "2%" in refused.reason

    _, v3 = register(params, trained, {"fid": 3.0})
    better = promote(params, name)
    assert better.promoted and better.version == v3 and better.previous_champion == v1

    client = client_for(params)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v3
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "refused" and "not better" in tags["promotion.reason"]
    assert tags["dataset.content_hash"].startswith("sha256:") and tags["git.commit"]

    model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    images = model.predict(pd.DataFrame({"n": [3], "seed": [1]}))
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8


def test_failed_parity_blocks_promotion_unless_forced(trained, tmp_path, monkeypatch) -> None:
    from imagegen.registry import promote, register

    monkeypatch.chdir(tmp_path)
    params = load_params(None, [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    name, _ = register(params, trained, {"fid": 1.0}, {"artifacts": {"int8": {"passed": False}}})
    decision = promote(params, name)
    assert not decision.promoted and "parity failed" in decision.reason
    forced = promote(params, name, force_reason="int8 not shipped")
    assert forced.promoted and forced.reason.startswith("forced: int8 not shipped")


def test_promote_cli_names_a_model_without_a_challenger(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from imagegen.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["promote", "imagegen-nothing-here", "-S", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 2
    assert "imagegen-nothing-here" in result.output
