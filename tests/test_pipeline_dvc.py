"""`dvc repro` on a fresh copy of the project builds the default dataset offline, then has nothing to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


@pytest.fixture()
def project_copy(tmp_path: Path) -> Path:
    """A fresh clone-like copy: tracked files only (plus working-tree edits), its own git repo."""
    dest = tmp_path / "project"
    for rel in _tracked_files():
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for extra in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / extra, dest / extra)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


def _dvc(args: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    env.pop("IMAGEGEN_DATA_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_dvc_repro_builds_the_default_dataset_then_skips(project_copy: Path) -> None:
    (project_copy / "dvc.lock").unlink(missing_ok=True)
    first = _dvc(["repro", "ingest"], project_copy)
    assert "Running stage 'ingest'" in first
    manifest = json.loads((project_copy / "data/processed/digits/manifest.json").read_text())
    assert manifest["counts"] == {"test": 269, "train": 1528}
    ignored = subprocess.run(["git", "check-ignore", "-q", "data/processed/digits/train_images.npy"], cwd=project_copy)
    assert ignored.returncode == 0, "processed data must be git-ignored (DVC owns it)"

    second = _dvc(["repro", "ingest"], project_copy)
    assert "Running stage" not in second
    assert "didn't change" in second or "up to date" in second
