"""Outputs never destroy what imagegen did not write, and a model folder never reads weights outside itself.

Each case is a real `imagegen` command that must stop with exit status 2 and one line naming the path, before
any work, leaving every file it was pointed at byte-identical.

| input | named |
|---|---|
| `--out` a folder of the user's files (ingest, train, export, evaluate, train-features) | the folder |
| `--out .`, `--out ..` (the working folder or a parent) | the folder |
| `--out` the input dataset or model (or a folder inside it) | the input |
| `--out` an existing regular file; an output of another kind | the path |
| `register --out` a user's file | the file |
| `model.json` weights that are paths (absolute, `../`), a list, numbers | model.json |
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagegen.artifact import save_model
from imagegen.cli import app
from imagegen.config import load_params
from imagegen.outputs import MARKER, OutputError, check_output
from imagegen.stages.ingest import run_ingest
from imagegen.training.families import build_family

TINY = ["tracking.enabled=false", "vae.base_filters=8", "vae.latent_dim=8", "data.image_size=8", "vae.steps=2"]


def cli(*args: str) -> object:
    return CliRunner().invoke(app, [*args, *(item for s in TINY for item in ("-S", s))])


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def one_line(result: object) -> str:
    message = result.stderr.strip()  # type: ignore[attr-defined]
    assert result.exit_code == 2, (result.exit_code, result.output)  # type: ignore[attr-defined]
    assert len(message.splitlines()) == 1 and message.startswith("error: "), message
    return message


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with a processed dataset (data/processed/digits) and an untrained tiny VAE (models/vae)."""
    root = tmp_path_factory.mktemp("outputs")
    params = load_params(None, [*TINY, f"data.processed_dir={root / 'data' / 'processed'}"])
    run_ingest(params)
    family = build_family("vae", params, (8, 8, 1), 10)
    save_model(family, root / "models" / "vae", {"step": 0, "dataset": {"name": "digits", "content_hash": "x"}})
    return root


@pytest.fixture
def victim(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder with a file in it; the test runs in ``project``."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\documentclass{article} years of work\n")
    return folder


@pytest.mark.parametrize(
    "command",
    [
        ["ingest"],
        ["train", "vae"],
        ["train-features"],
        ["export", "--model", "models/vae"],
        ["evaluate", "--samples", "nothing.npz"],
    ],
    ids=lambda c: c[0],
)
def test_bad_input_out_a_users_folder_is_refused_and_left_untouched(victim: Path, command: list[str]) -> None:
    before = snapshot(victim)
    message = one_line(cli(*command, "--out", str(victim)))
    assert str(victim) in message and "not written by imagegen" in message
    assert snapshot(victim) == before and sorted(p.name for p in victim.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("out", [".", ".."])
def test_bad_input_out_the_working_folder_or_a_parent_is_refused(project: Path, out: str, monkeypatch) -> None:
    monkeypatch.chdir(project)
    before = snapshot(project)
    message = one_line(cli("ingest", "--out", out))
    assert f"--out {out}" in message and "working folder" in message
    assert snapshot(project) == before
    assert not [p for p in project.iterdir() if p.name.endswith(".tmp")]  # no temporary dataset left behind


def test_bad_input_out_an_input_is_refused(project: Path, monkeypatch) -> None:
    monkeypatch.chdir(project)
    before = snapshot(project)
    message = one_line(cli("train", "vae", "--data", "data/processed/digits", "--out", "data/processed/digits"))
    assert "data/processed/digits" in message and "input" in message
    message = one_line(cli("export", "--model", "models/vae", "--out", "models/vae/export"))
    assert "models/vae" in message and "input" in message
    assert snapshot(project) == before


def test_bad_input_out_a_regular_file_or_another_kind_of_output_is_refused(victim: Path, project: Path) -> None:
    note = victim / "thesis.tex"
    assert "is a file" in one_line(cli("ingest", "--out", str(note)))
    # an imagegen output of another kind: a model folder is not a dataset
    model_copy = shutil.copytree(project / "models" / "vae", victim.parent / "vae_copy")
    before = snapshot(model_copy)
    message = one_line(cli("ingest", "--out", str(model_copy)))
    assert "imagegen model output, not a dataset output" in message
    assert snapshot(model_copy) == before


def test_bad_input_register_out_a_users_file_is_refused(victim: Path) -> None:
    note = victim / "thesis.tex"
    before = note.read_bytes()
    message = one_line(
        CliRunner().invoke(
            app,
            ["register", "--model", "models/vae", "--evaluation", "e.json", "--out", str(note), "-S", "vae.steps=2"],
        )
    )
    assert str(note) in message and "not a registration record" in message
    assert note.read_bytes() == before


def test_an_earlier_output_of_the_same_kind_empty_or_missing_folders_may_be_replaced(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", "dataset") == tmp_path / "empty"
    assert check_output(tmp_path / "missing", "model") == tmp_path / "missing"
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / MARKER).write_text(json.dumps({"imagegen_output": "export"}))
    (marked / "metrics.json").write_text("{}")
    assert check_output(marked, "export") == marked
    with pytest.raises(OutputError, match="imagegen export output, not a model output"):
        check_output(marked, "model")
    # an output of an earlier release, before markers: recognised by what its kind always holds
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "manifest.json").write_text(json.dumps({"content_hash": "sha256:0"}))
    assert check_output(legacy, "dataset") == legacy


@pytest.mark.parametrize(
    "weights",
    [
        {"encoder": "encoder.weights.h5", "decoder": "/abs/other_model/decoder.weights.h5"},
        {"encoder": "encoder.weights.h5", "decoder": "../other_model/decoder.weights.h5"},
        ["encoder.weights.h5", "decoder.weights.h5"],
        {"encoder": 1, "decoder": 2},
    ],
    ids=["absolute", "parent", "list", "numbers"],
)
def test_bad_input_model_json_weights_must_be_plain_names_inside_the_folder(
    project: Path, tmp_path: Path, weights: object, monkeypatch
) -> None:
    monkeypatch.chdir(project)
    model = shutil.copytree(project / "models" / "vae", tmp_path / "vae")
    meta = json.loads((model / "model.json").read_text())
    meta["weights"] = weights
    (model / "model.json").write_text(json.dumps(meta))
    message = one_line(cli("sample", "--model", str(model), "--out", str(tmp_path / "samples"), "--n", "2"))
    assert str(model / "model.json") in message and "weights" in message
    assert not (tmp_path / "samples").exists()


def test_bad_input_a_weights_link_leaving_the_model_folder_is_refused(
    project: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(project)
    model = shutil.copytree(project / "models" / "vae", tmp_path / "vae")
    other = tmp_path / "other"
    other.mkdir()
    shutil.move(model / "decoder.weights.h5", other / "decoder.weights.h5")
    (model / "decoder.weights.h5").symlink_to(other / "decoder.weights.h5")
    message = one_line(cli("sample", "--model", str(model), "--out", str(tmp_path / "samples"), "--n", "2"))
    assert "decoder.weights.h5" in message and "leaving the model folder" in message
