"""docs/benchmarks.md is generated from reports/bench/ and reports/profile/ by bench/make_docs.py: the committed
page must be exactly what the generator writes from the committed reports, so no figure in it drifts from its
source. Reads files only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "make_docs.py"
DOC = ROOT / "docs" / "benchmarks.md"


def test_committed_benchmarks_page_is_what_the_reports_generate(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert out.read_text() == DOC.read_text(), "docs/benchmarks.md is stale: run `python bench/make_docs.py`"


def test_every_report_has_a_section() -> None:
    page = DOC.read_text()
    reports = [*(ROOT / "reports" / "bench").glob("*.json"), *(ROOT / "reports" / "bench").glob("*.csv")]
    reports += (ROOT / "reports" / "profile").glob("*.json")
    assert reports
    for path in reports:
        assert f"## `{path.relative_to(ROOT).as_posix()}`" in page
