"""Provenance: an evaluation, an export, a student and a registry version name the weights they were made from,
and the registry ships only weights that were evaluated and exported.

Everything runs through the real `imagegen` commands on a real SQLite MLflow store: a tiny VAE is trained,
evaluated and exported, then trained again (other weights in the same folder), and the earlier evaluation and
export must no longer register it, nor can a version whose tags disagree be promoted.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagegen.cli import app
from tests.tiny_pipeline import TINY_VAE_PIPELINE, run_vae_stages

TINY = TINY_VAE_PIPELINE


def imagegen(root: Path, *args: str, tracking: bool = False, also: tuple[str, ...] = ()) -> Any:
    """Run an `imagegen` command in ``root`` (its store ``root/mlflow.db`` when tracking), ``also`` overriding."""
    store = [f"tracking.uri=sqlite:///{root / 'mlflow.db'}"] if tracking else ["tracking.enabled=false"]
    sets = [item for s in [*TINY, *store, *also] for item in ("-S", s)]
    return CliRunner().invoke(app, [*args, *sets])


def digest_of(model_dir: Path) -> str:
    return json.loads((model_dir / "model.json").read_text())["weights_digest"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a trained, evaluated and exported tiny VAE (``models/vae``, ``reports/eval``,
    ``exports/vae``)."""
    root = tmp_path_factory.mktemp("provenance")
    run_vae_stages(root, functools.partial(imagegen, root), "reports/eval", ["--out", "exports/vae"])
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(project / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return project


def test_every_artifact_names_the_digest_of_the_weights_it_measured(in_project: Path) -> None:
    digest = digest_of(in_project / "models/vae")
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert json.loads((in_project / "reports/eval/metrics.json").read_text())["weights_digest"] == digest
    assert json.loads((in_project / "exports/vae/metrics.json").read_text())["weights_digest"] == digest
    assert json.loads((in_project / "reports/train_vae/metrics.json").read_text())["weights_digest"] == digest


def test_provenance_register_refuses_an_evaluation_and_an_export_of_other_weights(in_project: Path) -> None:
    root = in_project
    other = root / "retrained"
    shutil.copytree(root / "models/vae", other / "models/vae")
    result = imagegen(root, "train", "vae", "--out", str(other / "models/vae"), also=("vae.steps=2",))
    assert result.exit_code == 0, result.output
    assert digest_of(other / "models/vae") != digest_of(root / "models/vae")

    for extra in ([], ["--export", "exports/vae"]):
        result = imagegen(
            root,
            "register",
            "--model",
            str(other / "models/vae"),
            "--evaluation",
            "reports/eval/metrics.json",
            *extra,
            "--out",
            str(root / "register.json"),
            tracking=True,
        )
        assert result.exit_code == 2, result.output
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and "reports/eval/metrics.json" in line and "made from weights" in line
    # with its own evaluation but the earlier export: the export is named
    ev = imagegen(root, "evaluate", "--model", str(other / "models/vae"), "--out", str(other / "eval"))
    assert ev.exit_code == 0, ev.output
    result = imagegen(
        root,
        "register",
        "--model",
        str(other / "models/vae"),
        "--evaluation",
        str(other / "eval/metrics.json"),
        "--export",
        "exports/vae",
        "--out",
        str(root / "register.json"),
        tracking=True,
    )
    assert result.exit_code == 2 and "exports/vae" in result.stderr and "made from weights" in result.stderr
    assert not (root / "register.json").exists()


def test_provenance_a_matching_version_carries_its_digest_and_the_gate_rechecks_it(in_project: Path) -> None:
    from mlflow.tracking import MlflowClient

    root = in_project
    result = imagegen(
        root,
        "register",
        "--model",
        "models/vae",
        "--evaluation",
        "reports/eval/metrics.json",
        "--export",
        "exports/vae",
        "--out",
        str(root / "register.json"),
        tracking=True,
    )
    assert result.exit_code == 0, result.output
    record = json.loads((root / "register.json").read_text())
    assert "version" not in record  # the store's count of versions is no fact of code, params and data
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(record["name"], record["alias"]).version
    assert str(json.loads((root / "register.run.json").read_text())["version"]) == str(version)
    tags = client.get_model_version(record["name"], version).tags
    digest = digest_of(root / "models/vae")
    assert record["weights_digest"] == digest
    assert tags["weights_digest"] == tags["eval.weights_digest"] == tags["export.weights_digest"] == digest

    # A tag edited since registration: the gate names the mismatch at promote, and the champion does not move.
    client.set_model_version_tag(record["name"], version, "export.weights_digest", "sha256:" + "0" * 64)
    promoted = imagegen(root, "promote", record["name"], tracking=True)
    assert promoted.exit_code == 3, promoted.output
    assert "export measured weights sha256:000000000000" in promoted.stdout
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(record["name"], "champion")


def test_provenance_a_version_registered_without_a_digest_is_refused_at_promote(in_project: Path) -> None:
    from imagegen.config import RegistryConfig
    from imagegen.registry.gate import gate

    tags = {"export.parity_passed": "true", "eval.fid": "1.0", "eval.floor.fid": "1.0"}
    ok, reason = gate(RegistryConfig(), "4", tags, None, None)
    assert not ok and "no weights_digest tag" in reason and "register the model again" in reason


def test_provenance_weights_changed_after_saving_are_refused_on_load(in_project: Path, tmp_path: Path) -> None:
    import h5py

    model = shutil.copytree(in_project / "models/vae", tmp_path / "vae")
    with h5py.File(model / "decoder.weights.h5", "r+") as fh:  # one weight edited in place
        names: list[str] = []
        fh.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        fh[names[0]][...] = fh[names[0]][()] + 1.0
    result = imagegen(in_project, "sample", "--model", str(model), "--out", str(tmp_path / "s"), "--n", "2")
    assert result.exit_code == 2, result.output
    assert "weights are not the ones" in result.stderr and not (tmp_path / "s").exists()


def test_provenance_a_model_folder_without_a_digest_says_to_train_again(in_project: Path, tmp_path: Path) -> None:
    model = shutil.copytree(in_project / "models/vae", tmp_path / "vae")
    meta = json.loads((model / "model.json").read_text())
    del meta["weights_digest"]  # as an older release wrote it
    (model / "model.json").write_text(json.dumps(meta))
    for args in (
        ["sample", "--model", str(model), "--out", str(tmp_path / "s")],
        ["export", "--model", str(model), "--out", str(tmp_path / "e")],
        ["evaluate", "--model", str(model), "--out", str(tmp_path / "ev")],
    ):
        result = imagegen(in_project, *args)
        assert result.exit_code == 2, (args, result.output)
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and "no weights digest" in line and "imagegen train" in line, line


def test_provenance_an_evaluation_from_an_older_release_is_refused_by_register(in_project: Path) -> None:
    old = in_project / "old_eval.json"
    report = json.loads((in_project / "reports/eval/metrics.json").read_text())
    del report["weights_digest"]
    old.write_text(json.dumps(report))
    result = imagegen(
        in_project, "register", "--model", "models/vae", "--evaluation", str(old), "--out", "r.json", tracking=True
    )
    assert result.exit_code == 2 and "imagegen evaluate" in result.stderr and "older imagegen" in result.stderr
