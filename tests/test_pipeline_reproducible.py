"""Tracked outputs are byte-reproducible: two fresh copies of the project run `dvc repro` (tiny sizes) and record
the same output hashes in `dvc.lock`; a change that leaves an output's bytes alone stops there (DVC's early
cut-off), so downstream stages are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_ops_support import clean_env, dvc, make_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # two full (tiny) reproductions


def output_hashes(root: Path) -> dict[str, str]:
    """``{stage: path: md5}`` of every output recorded in ``root/dvc.lock``."""
    lock: dict[str, Any] = yaml.safe_load((root / "dvc.lock").read_text())
    return {
        f"{stage}: {out['path']}": out["md5"]
        for stage, entry in lock["stages"].items()
        for out in entry.get("outs", [])
    }


def repro(root: Path, *args: str) -> str:
    env = clean_env(root, MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}")
    return dvc(["repro", *args], root, env, timeout=1800)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two fresh copies of the project (tiny params), each reproduced from scratch by `dvc repro`."""
    roots = []
    for name in ("first", "second"):
        root = make_project(tmp_path_factory.mktemp(name) / "project")
        (root / "dvc.lock").unlink(missing_ok=True)
        repro(root)
        roots.append(root)
    return roots[0], roots[1]


def test_two_fresh_reproductions_record_the_same_output_hashes(two_runs: tuple[Path, Path]) -> None:
    first, second = (output_hashes(root) for root in two_runs)
    assert first, "dvc.lock records no outputs"
    assert any(key.startswith("export@") for key in first) and any(key.startswith("train_ddpm") for key in first)
    differing = sorted(key for key in first if first[key] != second.get(key))
    assert not differing, f"outputs whose bytes differ between two reproductions: {differing}"
    assert first.keys() == second.keys()


def test_a_comment_in_the_export_code_reruns_export_and_skips_what_follows(two_runs: tuple[Path, Path]) -> None:
    root = two_runs[0]
    before = output_hashes(root)
    graph = root / "src" / "imagegen" / "export" / "graph.py"
    graph.write_text(graph.read_text() + "\n# a comment: the export's bytes do not change\n")
    out = repro(root)
    assert "Running stage 'export@" in out, out
    assert "Running stage 'register@" not in out, out  # the export's bytes did not change: DVC stops there
    assert "Running stage 'train_" not in out and "Running stage 'evaluate@" not in out
    assert output_hashes(root) == before
