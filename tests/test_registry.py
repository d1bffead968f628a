"""The MLflow model registry on a real SQLite store: versions, the promotion gate, loading the
champion.

The helpers at the top (a tiny trained model, evaluation reports, a cheap tagged version) are shared
by test_bad_input_registry.py and test_mlflow_server.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagegen.config import Params, RegistryConfig, load_params

# The weights digest the reports below name (a model folder's own is read with `digest_of`).
DIGEST = "sha256:" + "ab" * 32
# An evaluation report as `imagegen evaluate` writes it (the digits models score like this today).
GOOD_EVAL: dict[str, Any] = {
    "weights_digest": DIGEST,
    "fid": 3.0,
    "kid_mean": 0.02,
    "precision": 0.65,
    "recall": 0.85,
    "relative_fid": 0.11,
    "density": 0.95,
    "coverage": 0.9,
    "class_coverage": 1.0,
    "class_entropy": 0.93,
    "n_generated": 1000,
    "floor": {"fid": 1.0, "precision": 0.92, "recall": 0.91},
}
PARITY_OK: dict[str, Any] = {
    "weights_digest": DIGEST,
    "artifacts": {"float32": {"passed": True}, "int8": {"passed": True}},
}


def evaluation(**changes: Any) -> dict[str, Any]:
    return {**GOOD_EVAL, **changes}


def digest_of(model_dir: Path) -> str:
    """The weights digest a model folder records in its model.json."""
    import json

    return json.loads((Path(model_dir) / "model.json").read_text())["weights_digest"]


def of_model(report: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """``report`` as if it had been made from the weights in ``model_dir``."""
    return {**report, "weights_digest": digest_of(model_dir)}


def tiny_vae(root: Path) -> Path:
    """A 3-step VAE on 8x8 digits (seconds to train): a real model folder to register and sample."""
    from imagegen.stages.ingest import run_ingest
    from imagegen.stages.train import run_train

    p = load_params(
        None,
        [
            "tracking.enabled=false",
            "data.image_size=8",
            "vae.steps=3",
            "vae.base_filters=4",
            "train.batch_size=16",
            "train.jit_compile=false",
            f"data.processed_dir={root / 'd'}",
            f"train.checkpoints_dir={root / 'c'}",
            f"train.reports_dir={root / 'r'}",
        ],
    )
    return run_train(p, "vae", data_dir=run_ingest(p), out_dir=root / "vae", show_progress=False)


def store_params(uri: str, *overrides: str) -> Params:
    return load_params(None, [f"tracking.uri={uri}", *overrides])


def add_version(client: Any, name: str, tags: dict[str, str], alias: str = "challenger") -> str:
    """A registry version carrying ``tags`` (as `register` writes them) without logging a model: the
    gate only reads tags, and this takes milliseconds rather than the seconds of a pyfunc log."""
    import contextlib

    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # it exists
        client.create_registered_model(name)
    version = str(client.create_model_version(name, source="file:///nowhere", tags=tags).version)
    client.set_registered_model_alias(name, alias, version)
    return version


def version_tags(evaluation_report: dict[str, Any], parity: bool | None = True) -> dict[str, str]:
    from imagegen.registry import eval_tags

    tags = eval_tags(evaluation_report)
    digest = evaluation_report.get("weights_digest", DIGEST)  # evaluation, export and version: the same weights
    tags.update({"weights_digest": digest, "eval.weights_digest": digest})
    if parity is not None:
        tags["export.parity_passed"] = "true" if parity else "false"
        tags["export.weights_digest"] = digest
    return tags


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_vae(tmp_path_factory.mktemp("reg"))


# --------------------------------------------------------------------------------------------------
# The gate as a function of tags


def _gate(tags: dict[str, str], champion: dict[str, str] | None = None, **cfg: Any) -> tuple[bool, str]:
    from imagegen.registry.gate import gate

    return gate(RegistryConfig(**cfg), "7", tags, None if champion is None else "6", champion)


def test_the_default_floor_passes_todays_digits_models_and_refuses_a_collapsed_first_version() -> None:
    import json

    reports = sorted(Path(__file__).resolve().parents[1].glob("reports/evaluate_*/metrics.json"))
    for report in reports:
        ok, reason = _gate(version_tags(json.loads(report.read_text())))
        assert ok, f"{report}: {reason}"
    ok, reason = _gate(version_tags(evaluation(precision=0.0, class_coverage=0.1)))
    assert not ok and "absolute quality floor" in reason
    assert "registry.min_precision" in reason and "registry.min_class_coverage" in reason


def test_collapse_never_passes_even_against_a_worse_champion() -> None:
    champion = version_tags(evaluation(fid=50.0))
    for collapsed in (
        evaluation(class_entropy=0.01, fid=2.0),  # DCGAN mode collapse: one class
        evaluation(recall=0.0, precision=0.0, class_entropy=0.0, class_coverage=0.1),  # VAE: the mean image
        evaluation(fid=math.nan),  # DDPM non-finite samples
    ):
        ok, reason = _gate(
            version_tags(collapsed),
            champion,
            min_precision=0,
            min_recall=0,
            min_class_coverage=0,
            min_class_entropy=0,
            max_relative_fid=1e9,
        )
        assert not ok and "collapse" in reason, reason
    with pytest.raises(ValueError):
        RegistryConfig(collapse_class_entropy=0)  # the collapse check cannot be switched off


def test_the_gate_names_a_missing_parity_verdict_and_missing_metrics() -> None:
    ok, reason = _gate(version_tags(GOOD_EVAL, parity=None))
    assert not ok and "export.parity_passed" in reason and "--export" in reason
    ok, reason = _gate(version_tags({"fid": 3.0}))
    assert not ok and "eval.precision" in reason and "eval.relative_fid" in reason


# --------------------------------------------------------------------------------------------------
# On a real store


def test_the_gate_refuses_a_worse_model_and_promotes_a_better_one(trained, tmp_path, monkeypatch) -> None:
    import mlflow.pyfunc
    import pandas as pd

    from imagegen.registry import CHAMPION, client_for, promote, register

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    params = store_params(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name, v1 = register(params, trained, of_model(evaluation(fid=5.0), trained), of_model(PARITY_OK, trained))
    assert name == "imagegen-vae-digits"
    first = promote(params, name)
    assert first.promoted and "no champion yet" in first.reason and "absolute quality floor" in first.reason

    client = client_for(params)
    v2 = add_version(client, name, version_tags(evaluation(fid=5.0 * 0.99)))  # better, by less than 2%
    refused = promote(params, name)
    assert not refused.promoted
    assert f"champion v{v1}" in refused.reason and "not better" in refused.reason and "2%" in refused.reason

    v3 = add_version(client, name, version_tags(evaluation(fid=3.0)))
    better = promote(params, name)
    assert better.promoted and better.version == v3 and better.previous_champion == v1

    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v3
    tags = client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == "refused" and "not better" in tags["promotion.reason"]
    v1_tags = client.get_model_version(name, v1).tags
    assert v1_tags["dataset.content_hash"].startswith("sha256:") and len(v1_tags["git.commit"]) == 40

    client.set_registered_model_alias(name, CHAMPION, v1)  # load the real pyfunc
    model = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    import imagegen.artifact  # the folder is read once, at load: a request must not read it again

    monkeypatch.setattr(imagegen.artifact, "load_model", lambda *a, **k: pytest.fail("a request re-read the model"))
    images = model.predict(pd.DataFrame({"n": [3], "seed": [1]}))
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert np.array_equal(model.predict([{"n": 3, "seed": 1}]), images)  # same seed, same images


def test_the_registered_pyfunc_pins_imagegen_and_its_backend_and_validates_requests(
    trained, tmp_path, monkeypatch
) -> None:
    import importlib.metadata
    import subprocess
    import sys

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from imagegen.registry import register

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name, version = register(store_params(uri), trained, of_model(GOOD_EVAL, trained), of_model(PARITY_OK, trained))
    mlflow.set_registry_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", tracking_uri=uri))
    requirements = (local / "requirements.txt").read_text().split()
    wheel = f"imagegen-{importlib.metadata.version('imagegen')}-py3-none-any.whl"
    assert f"code/{wheel}" in requirements and (local / "code" / wheel).is_file()
    for package in ("keras", "tensorflow", "numpy"):
        assert f"{package}=={importlib.metadata.version(package)}" in requirements

    # A real wheel: pip installs it (no index, no dependencies) and imagegen imports from it.
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(local / "code" / wheel),
        ],
        check=True,
    )
    probe = "import imagegen, sys; print(imagegen.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert out.startswith(str(target))

    model = mlflow.pyfunc.load_model(str(local))
    schema = str(model.metadata.get_input_schema())  # inferred from the type hint list[GenerateRequest]
    assert "n: long" in schema and "seed: long" in schema
    with pytest.raises(MlflowException, match="greater than or equal to 1"):
        model.predict(pd.DataFrame({"n": [0], "seed": [0]}))


def test_failed_parity_blocks_promotion_unless_forced(tmp_path, monkeypatch) -> None:
    from imagegen.registry import client_for, promote

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    params = store_params(f"sqlite:///{tmp_path / 'mlflow.db'}")
    add_version(client_for(params), "m", version_tags(GOOD_EVAL, parity=False))
    decision = promote(params, "m")
    assert not decision.promoted and "parity failed" in decision.reason
    forced = promote(params, "m", force_reason="int8 not shipped")
    assert forced.promoted and forced.reason.startswith("forced: int8 not shipped")


def test_promote_cli_names_a_model_without_a_challenger(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from imagegen.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(
        app,
        ["promote", "imagegen-nothing-here", "-S", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"],
    )
    assert result.exit_code == 2
    assert "imagegen-nothing-here" in result.output
