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


def test_the_bf16_reference_computes_the_same_loss_in_bfloat16(compare) -> None:
    fp32, _, _ = compare.reference_step(16, 4, "eager")
    bf16, _, parameters = compare.reference_step(16, 4, "eager-bf16")
    exact, rounded = fp32(), bf16()
    assert parameters == 1_075_361
    # Same seed, batch and noise: the same loss up to bfloat16's 8-bit mantissa, but not bit for bit.
    assert rounded == pytest.approx(exact, rel=0.05) and rounded != exact


def test_quick_run_prints_medians_and_ranges_and_writes_json(compare, tmp_path) -> None:
    out = tmp_path / "compare.json"
    # Without XLA (jit_compile=false) the smoke run spends no minutes compiling.
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--out",
            str(out),
            "--backends",
            "tf",
            "jax",
            "-S",
            "train.jit_compile=false",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # The machine as measured: its CPU (which decides the math kernels), then its load.
    before = r"^before \(after waiting \d+ s for idle\): .+ \((no )?AVX-512.*AMX.*\), load average \(1, 5, 15 min\)"
    assert re.search(before, proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(r"^\s+configuration\s+median\s+min\s+max\s+disturbed rounds", proc.stdout, re.MULTILINE)
    assert re.search(r"ours-tf / ref-eager:2: \d+\.\d\d \(range \d+\.\d\d-\d+\.\d\d\)", proc.stdout)
    assert "parameters equal: True" in proc.stdout
    data = json.loads(out.read_text())
    assert data["machine_before"]["cpu"]["model"]
    (cell,) = data["cells"]
    assert {r["prepare"]["parameters"] for r in cell["results"].values()} == {1_075_361}
    for name in ("ours-tf", "ours-jax", "ref-eager:2"):
        rounds = cell["results"][name]["rounds"]
        assert len(rounds) == 2 and all(r["rate"] > 0 for r in rounds)
        assert all("other_cores" in r and "idle_workers_cpu_s" in r for r in rounds)
    summary = cell["summary_ours-tf"]
    assert summary["best_reference"] == "ref-eager:2"
    median = summary["configs"]["ours-tf"]["median"] / summary["configs"]["ref-eager:2"]["median"]
    assert summary["ratio"] == pytest.approx(median)
    # Same network, same step: the two FLOP counts agree to within what XLA counts beyond matmuls and convs.
    flops = {n: r["prepare"]["flops_per_image"] for n, r in cell["results"].items() if n != "ours-tf"}
    assert 0.9 < flops["ours-jax"] / flops["ref-eager:2"] < 1.5


def test_quick_sampling_run_compares_our_sampler_and_savedmodel_with_the_ddim_loop(compare, tmp_path) -> None:
    out = tmp_path / "sampling.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "compare_sampling.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for ours in ("ours-graph", "ours-savedmodel"):
        assert re.search(rf"{ours} / ref-eager:2: \d+\.\d\d \(range", proc.stdout), proc.stdout
    report = json.loads(out.read_text())
    assert report["request"]["ours_cpu_math"] == "float32"  # the math ours ran is part of the record
    (cell,) = report["cells"]
    assert set(cell["results"]) == {"ours-graph", "ours-savedmodel", "ref-eager:2"}
    assert all(r["rate"] > 0 for res in cell["results"].values() for r in res["rounds"])
