"""bench/interleaved.py: side-by-side timings say what they can support. A measurement records the CPU the rest
of the machine used while it ran, and a comparison is only called when the rounds' extremes agree."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import interleaved  # noqa: E402

ECHO = (
    "import json, sys, time\nprint(json.dumps({'ready': 1}), flush=True)\n"
    "for line in sys.stdin:\n    time.sleep(json.loads(line)['sleep'])\n"
    "    print(json.dumps({'rate': 1.0}), flush=True)\n"
)


def rounds(*rates: float, disturbed: int = 0) -> dict:
    return {"rounds": [{"rate": r, "disturbed": i < disturbed} for i, r in enumerate(rates)]}


def test_ours_is_faster_only_when_every_round_allows_it() -> None:
    res = {"ours": rounds(120, 121, 119, 122, 120), "ref-a": rounds(100, 101, 99, 100, 100), "ref-b": rounds(50, 51)}
    s = interleaved.summarize(res, "ours", ["ref-a", "ref-b"], target=1.2)
    assert s["best_reference"] == "ref-a"
    assert s["ratio"] == pytest.approx(120 / 100)
    assert s["ratio_range"] == pytest.approx([119 / 101, 122 / 99])
    assert s["verdict"] == "ours faster" and s["target_met"]


def test_overlapping_rounds_are_inconclusive_even_with_a_higher_median() -> None:
    res = {"ours": rounds(105, 106, 95, 104, 105), "ref": rounds(100, 101, 99, 100, 100)}
    s = interleaved.summarize(res, "ours", ["ref"], target=1.0)
    assert s["ratio"] > 1.0
    assert s["verdict"].startswith("inconclusive") and "crosses 1.0" in s["verdict"]
    assert not s["target_met"]


def test_disturbed_rounds_make_the_comparison_inconclusive() -> None:
    res = {"ours": rounds(200, 201, 199, disturbed=1), "ref": rounds(100, 101, 99)}
    s = interleaved.summarize(res, "ours", ["ref"], target=1.2)
    assert "1 disturbed rounds" in s["verdict"] and not s["target_met"]


def test_a_busy_neighbour_marks_the_measurement_disturbed_and_an_idle_worker_costs_nothing(tmp_path) -> None:
    a = interleaved.Worker("a", [sys.executable, "-c", ECHO], {}, tmp_path)
    b = interleaved.Worker("b", [sys.executable, "-c", ECHO], {}, tmp_path)
    try:
        a.read(), b.read()
        quiet = interleaved.measured(a, [b], {"sleep": 1.0})
        assert quiet["idle_workers_cpu_s"] < 0.05
        spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
        time.sleep(0.3)
        busy = interleaved.measured(a, [b], {"sleep": 1.0})
        spin.wait()
        assert busy["other_cores"] > 0.5 and busy["disturbed"]
        assert busy["worker_cores"] < 0.1  # the measured worker slept
    finally:
        a.close(), b.close()


def test_machine_state_names_a_busy_process() -> None:
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.2)
        state = interleaved.machine_state()
    finally:
        spin.wait()
    assert spin.pid in [b["pid"] for b in state["busy_processes"]]
    assert not state["idle"]
    assert "NOT IDLE" in interleaved.describe_state("before", state)


XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 hypervisor

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 hypervisor
"""
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_a_report_tells_a_cpu_with_amx_from_one_without_whatever_their_names() -> None:
    xeon, epyc = interleaved.parse_cpuinfo(XEON), interleaved.parse_cpuinfo(EPYC)
    assert xeon["model"].startswith("Intel(R) Xeon(R)") and xeon["vendor"] == "GenuineIntel"
    assert {"amx_bf16", "avx512_bf16"} <= set(xeon["flags"]) and xeon["virtual_machine"]
    assert "amx_bf16" not in epyc["flags"] and "avx512_bf16" in epyc["flags"] and not epyc["virtual_machine"]
    assert interleaved.describe_cpu(xeon).endswith("(AVX-512, AVX512_BF16, AVX512_FP16, AMX; virtual machine)")
    assert interleaved.describe_cpu(epyc) == "AMD EPYC (AVX-512, AVX512_BF16, no AMX)"


def test_the_machine_state_a_benchmark_records_names_this_cpu() -> None:
    state = interleaved.machine_state()
    assert state["cpu"] == interleaved.cpu_description()
    assert interleaved.describe_cpu(state["cpu"]) in interleaved.describe_state("before", state)
