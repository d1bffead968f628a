"""bench/compare_reference.py: imagegen's DDPM U-Net and the diffusers reference are the same size, and the
one-command benchmark runs and prints its table.

torch and diffusers are the benchmark-only extra (``.[bench]``), which CI does not install: these tests are
skipped there. The package itself never imports them (checked here without them).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "compare_reference.py"


def test_the_package_never_imports_torch_or_diffusers() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+(torch|diffusers)\b", re.MULTILINE)
    offenders = [str(p) for p in (ROOT / "src" / "imagegen").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


@pytest.fixture(scope="module")
def compare():
    pytest.importorskip("torch", reason="torch is the benchmark-only extra (.[bench]); CI does not install it")
    pytest.importorskip("diffusers", reason="diffusers is the benchmark-only extra (.[bench]); CI does not install it")
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import compare_reference
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return compare_reference


@pytest.mark.parametrize(("size", "expected"), [(16, 1_075_361), (32, 1_112_801)])
def test_our_unet_and_the_diffusers_reference_have_the_same_parameter_count(compare, size, expected) -> None:
    assert compare.reference_parameters(size) == expected
    assert compare.ours_parameters(size) == expected


def test_quick_run_prints_the_comparison_table_and_writes_json(compare, tmp_path) -> None:
    out = tmp_path / "compare.json"
    # Without XLA (jit_compile=false) the smoke run spends no minutes compiling; FLOPs still come from XLA's
    # cost analysis of the lowered JAX step.
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "-S", "train.jit_compile=false"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "load average at start" in proc.stdout
    assert re.search(r"^config\s+params ours/ref\s+img/s TF\s+img/s JAX\s+img/s ref", proc.stdout, re.MULTILINE)
    assert re.search(r"^16x16x1 b8\s+1,075,361/1,075,361", proc.stdout, re.MULTILINE), proc.stdout
    assert "parameters equal: True" in proc.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["parameters_ours"] == row["parameters_reference"] == 1_075_361
    for key in ("images_per_sec_tf", "images_per_sec_jax", "images_per_sec_reference"):
        assert row[key] > 0
    # Same network, same step: the two FLOP counts agree to within what XLA counts beyond matmuls and convs.
    assert 0.9 < row["gflops_per_image_ours"] / row["gflops_per_image_reference"] < 1.5
