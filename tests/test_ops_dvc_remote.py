"""The default DVC remote (a folder beside the project, .dvc/config) carries data and models between
clones: `dvc push` from one, `dvc pull` in a fresh clone restores the same files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from test_ops_support import TINY_PARAMS, clean_env, dvc, git, make_project


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_push_then_pull_in_a_second_clone_restores_data_and_models(tmp_path: Path) -> None:
    tiny = {**TINY_PARAMS, "tracking": {"enabled": False}}
    project = make_project(tmp_path / "project", tiny)
    env = clean_env(project)
    # The default remote: <parent of the project>/imagegen-dvc-remote
    remote = tmp_path / "imagegen-dvc-remote"
    listed = dvc(["remote", "list"], project, env)
    assert str(remote) in "".join(listed.split()), listed  # DVC wraps its table to the terminal width

    dvc(["repro", "train_vae"], project, env)  # ingest + a tiny VAE: data and a model to share
    git(["add", "dvc.lock", "reports"], project)
    git(["commit", "-qm", "tiny VAE"], project)
    pushed = dvc(["push"], project, env)
    assert "pushed" in pushed, pushed
    assert any(remote.rglob("*")), "nothing arrived in the remote folder"
    assert "in sync" in dvc(["status", "--cloud", "--with-deps", "train_vae"], project, env)

    clone = tmp_path / "clone"
    git(["clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    # Only ingest and train_vae are built here, so the pull names them (a plain `dvc pull` would also
    # ask for the other stages' outputs, which were never pushed).
    dvc(["pull", "--with-deps", "train_vae"], clone, env)
    for out in ("data/processed/digits", "models/vae"):
        assert _digests(clone / out) == _digests(project / out), out
        assert _digests(clone / out), out
    assert "up to date" in dvc(["status", "--with-deps", "train_vae"], clone, env)
