"""The pipeline profile interleaves a baseline commit with the current one and compares them round by round."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from pipeline_profile import compare, run_order  # noqa: E402


def test_without_a_baseline_the_runs_are_the_current_commit_one_after_another() -> None:
    assert run_order(3, baseline=False) == [("current", 0), ("current", 1), ("current", 2)]


def test_a_baseline_runs_in_every_round_first_then_second_so_a_drifting_machine_weighs_on_both() -> None:
    assert run_order(3, baseline=True) == [
        ("baseline", 0),
        ("current", 0),
        ("current", 1),
        ("baseline", 1),
        ("baseline", 2),
        ("current", 2),
    ]


def test_the_comparison_is_the_ratio_of_medians_with_the_range_of_the_rounds_ratios() -> None:
    result = compare(current=[350.0, 360.0, 400.0], baseline=[380.0, 390.0, 420.0])
    assert result["median_wall_s"] == 360.0 and result["baseline_median_wall_s"] == 390.0
    assert result["ratio_of_medians"] == pytest.approx(360.0 / 390.0)
    assert result["round_ratio_range"] == pytest.approx([350.0 / 380.0, 400.0 / 420.0])
