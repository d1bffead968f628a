"""`imagegen compare`: the pipeline's models side by side, read from the reports the stages wrote, with each
report checked against the weights now in its model folder.

A tiny VAE goes through the real commands (ingest, train, evaluate, export) into the folders `dvc.yaml` uses;
then it is trained again, and the earlier evaluation and export must show as made from other weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagegen.cli import app
from imagegen.provenance import short
from tests.tiny_pipeline import TINY_VAE_PIPELINE, run_vae_stages

TINY = [
    *TINY_VAE_PIPELINE,
    "tracking.enabled=false",
    "evaluate.models={vae: models/vae, ddpm: models/ddpm}",
    "export.ship={vae: models/vae}",
]


def imagegen(*args: str, also: tuple[str, ...] = ()) -> Any:
    sets = [item for s in [*TINY, *also] for item in ("-S", s)]
    return CliRunner().invoke(app, [*args, *sets])


def compare_json(*also: str) -> dict[str, dict[str, Any]]:
    result = imagegen("compare", "--format", "json", also=also)
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose VAE was trained, evaluated and exported where the pipeline puts them; no DDPM yet."""
    root = tmp_path_factory.mktemp("compare")
    run_vae_stages(root, imagegen, "reports/evaluate_vae", ["--out", "exports/vae", "--report", "reports/export_vae"])
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    return project


def test_a_fresh_evaluation_and_export_show_their_figures_and_vouch_for_the_folders_weights(in_project: Path) -> None:
    rows = compare_json()
    vae = rows["vae"]
    evaluation = json.loads((in_project / "reports/evaluate_vae/metrics.json").read_text())
    assert vae["evaluation"]["fid"] == evaluation["fid"]
    assert vae["family"] == "vae"
    assert vae["made_from"] == {"evaluation": "current", "export": "current", "registration": None}
    assert vae["weights_digest"] == evaluation["weights_digest"]

    table = imagegen("compare", "--format", "markdown")
    assert table.exit_code == 0, table.output
    vae_line = next(line for line in table.stdout.splitlines() if line.startswith("| vae |"))
    assert f"{evaluation['fid']:.3f}" in vae_line
    assert "| passed |" in vae_line and vae_line.endswith("| yes |")


def test_a_model_not_trained_yet_is_listed_without_figures(in_project: Path) -> None:
    ddpm = compare_json()["ddpm"]
    assert ddpm["weights_digest"] is None and ddpm["evaluation"] is None
    table = imagegen("compare", "--format", "markdown").stdout
    assert "| ddpm | - | - |" in table and "models/ddpm absent" in table


def test_reports_of_earlier_weights_show_as_stale_and_check_exits_3(in_project: Path) -> None:
    before = compare_json()["vae"]["weights_digest"]
    retrain = imagegen("train", "vae", also=("vae.steps=4",))
    assert retrain.exit_code == 0, retrain.output

    vae = compare_json()["vae"]
    assert vae["weights_digest"] != before
    assert vae["made_from"]["evaluation"] == "other weights"
    assert vae["made_from"]["export"] == "other weights"

    table = imagegen("compare", "--format", "markdown").stdout
    assert f"no: evaluation {short(before)}, export {short(before)} (weights {short(vae['weights_digest'])})" in table

    check = imagegen("compare", "--check")
    assert check.exit_code == 3
    assert "vae: evaluation, export" in check.stderr

    remade = imagegen("evaluate", "--model", "models/vae", "--out", "reports/evaluate_vae")
    assert remade.exit_code == 0, remade.output
    assert compare_json()["vae"]["made_from"]["evaluation"] == "current"


def test_a_report_that_is_not_json_is_named_in_one_line(in_project: Path) -> None:
    record = in_project / "reports/register_vae.json"
    record.write_text("{not json")
    try:
        result = imagegen("compare")
    finally:
        record.unlink()
    assert result.exit_code == 2
    assert "reports/register_vae.json: not JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_unknown_format_is_refused(in_project: Path) -> None:
    result = imagegen("compare", "--format", "html")
    assert result.exit_code == 2
    assert "--format 'html': expected table, markdown or json" in result.stderr
