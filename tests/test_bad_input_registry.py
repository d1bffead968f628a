"""Bad input to the registry commands, and collapse: one test per case.

Every case runs the real CLI against a real SQLite MLflow store holding a champion (v1, promoted
through the gate), and checks the exit code, the one-line message naming the key or file, and that
the champion alias and its tags are exactly as before. ``pytest -k bad_input`` selects them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_registry import (
    GOOD_EVAL,
    add_version,
    evaluation,
    of_model,
    store_params,
    tiny_vae,
    version_tags,
)

NAME = "imagegen-vae-digits"


@dataclass
class Store:
    root: Path
    db: Path
    uri: str
    model_dir: Path

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def champion(self, name: str = NAME) -> tuple[str, dict[str, str]] | None:
        """(version, tags) of the champion, None when there is none."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client().get_model_version_by_alias(name, "champion")
        except MlflowException:
            return None
        return str(mv.version), dict(mv.tags)

    def cli(self, *args: str) -> Any:
        from imagegen.cli import app

        return CliRunner().invoke(app, [*args, "-S", f"tracking.uri={self.uri}"])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store whose champion is v1 (a good version, promoted by the gate), and a tiny trained
    model."""
    from imagegen.registry import promote

    root = tmp_path_factory.mktemp("bad_input_registry")
    model_dir = tiny_vae(root)
    db = root / "mlflow.db"
    params = store_params(f"sqlite:///{db}")
    from imagegen.registry import client_for

    add_version(client_for(params), NAME, version_tags(GOOD_EVAL))
    assert promote(params, NAME).promoted
    return db, model_dir


@pytest.fixture
def store(pristine: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A copy of the pristine store for one test (cwd and imagegen's cache in the test's tmp)."""
    db, model_dir = pristine
    shutil.copy2(db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Store(tmp_path, tmp_path / "mlflow.db", f"sqlite:///{tmp_path / 'mlflow.db'}", model_dir)


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_bad_input_a_version_registered_without_export_is_refused(store: Store) -> None:
    before = store.champion()
    report = store.root / "metrics.json"
    report.write_text(json.dumps(of_model(evaluation(fid=1.5), store.model_dir)))  # much better, but no parity
    registered = store.cli(
        "register",
        "--model",
        str(store.model_dir),
        "--evaluation",
        str(report),
        "--out",
        str(store.root / "register.json"),
    )
    assert registered.exit_code == 0, registered.output

    result = store.cli("promote", NAME)
    assert result.exit_code == 3
    line = one_line(result.stdout)
    assert "refused" in line and "export.parity_passed" in line and "--export" in line
    assert store.champion() == before


@pytest.mark.parametrize("how", ["again", "concurrently"])
def test_bad_input_promote_is_idempotent_and_serialised(store: Store, how: str) -> None:
    if how == "again":
        before = store.champion()
        result = store.cli("promote", NAME)
        assert result.exit_code == 0
        assert "already the champion" in one_line(result.stdout)
        assert store.champion() == before  # its promotion.* tags are not rewritten
        return

    v1, v1_tags = store.champion()
    v2 = add_version(store.client(), NAME, version_tags(evaluation(fid=2.0)))
    cmd = [sys.executable, "-m", "imagegen", "promote", NAME, "-S", f"tracking.uri={store.uri}"]
    env = {**os.environ, "COLUMNS": "400"}
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    said = [one_line(out) for out, _ in outs]
    assert sum("already the champion" in line for line in said) == 1, said  # the second waited
    assert sum(f"v{v2}: promoted" in line for line in said) == 1, said
    champion, tags = store.champion()
    assert champion == v2 and tags["promotion.decision"] == "promoted"
    assert tags["promotion.previous_champion"] == v1
    assert dict(store.client().get_model_version(NAME, v1).tags) == v1_tags


def test_bad_input_a_first_version_must_clear_the_absolute_floor(store: Store) -> None:
    before = store.champion()
    first = "imagegen-dcgan-digits"  # no champion yet
    add_version(store.client(), first, version_tags(evaluation(precision=0.0, class_coverage=0.1)))
    result = store.cli("promote", first)
    assert result.exit_code == 3
    line = one_line(result.stdout)
    assert "absolute quality floor" in line
    assert "registry.min_precision" in line and "registry.min_class_coverage" in line
    assert store.champion(first) is None
    assert store.champion() == before


@pytest.mark.parametrize(
    ("case", "metrics", "named"),
    [
        ("dcgan_mode_collapse", {"class_entropy": 0.01, "class_coverage": 0.1}, "eval.class_entropy"),
        (
            "vae_posterior_collapse",
            {"precision": 0.0, "recall": 0.0, "class_entropy": 0.0},
            "eval.recall",
        ),
        (
            "ddpm_flat_samples",
            {"recall": 0.001, "class_entropy": 0.0, "class_coverage": 0.1},
            "eval.class_entropy",
        ),
        (
            "ddpm_non_finite_samples",
            {"fid": float("nan"), "kid_mean": float("nan")},
            "eval.fid=nan",
        ),
    ],
)
def test_bad_input_collapse_never_passes_the_gate(
    store: Store, case: str, metrics: dict[str, float], named: str
) -> None:
    before = store.champion()
    # A better FID than the champion's 3.0: only the collapse check stands in the way.
    report = evaluation(**{"fid": 1.0, **metrics})
    add_version(store.client(), NAME, version_tags(report))
    result = store.cli("promote", NAME)
    assert result.exit_code == 3
    line = one_line(result.stdout)
    assert "collapse" in line and named in line, line
    assert store.champion() == before


@pytest.mark.parametrize("command", [["promote", NAME], ["train", "vae"]])
@pytest.mark.parametrize("damage", ["corrupt", "read_only"])
def test_bad_input_a_broken_store_is_one_line_naming_the_file(store: Store, damage: str, command: list[str]) -> None:
    before = store.champion()
    if damage == "corrupt":
        data = bytearray(store.db.read_bytes())
        data[:100] = b"\x00" * 100  # the SQLite header is gone
        store.db.write_bytes(bytes(data))
        expected = "not an SQLite database"
    else:
        store.db.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        expected = "read-only"
    damaged = store.db.read_bytes()
    try:
        result = store.cli(*command)
        assert result.exit_code == 2
        line = one_line(result.stderr)
        assert str(store.db) in line and expected in line and "tracking.enabled=false" in line
        assert store.db.read_bytes() == damaged  # nothing written
    finally:
        store.db.chmod(0o644)
    if damage == "read_only":
        assert store.champion() == before
