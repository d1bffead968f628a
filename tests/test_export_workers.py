"""TFLite conversions in worker processes: how many the export starts, what a failing one reports, and that none
outlives the export.

That a worker writes the same bytes as the exporting process is specified with the export's reproducibility
(``tests/test_export_reproducible.py``: one of its two exports converts in workers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegen.config import ExportConfig
from imagegen.errors import ExportError
from imagegen.export.tflite import Conversion, convert_all
from imagegen.export.workers import ConversionWorkers
from imagegen.stages.export import conversion_workers
from imagegen.startup import usable_cores

pytest.importorskip("tensorflow")


def test_auto_starts_one_worker_per_diffusion_conversion_beyond_the_first_and_none_for_a_decoder() -> None:
    cfg = ExportConfig()  # float32, float16 and int8 (fastest: dynamic range alone for a diffusion graph)
    assert conversion_workers(cfg, diffusion=False) == 0  # a decoder converts in a fraction of a second
    assert conversion_workers(cfg, diffusion=True) == (2 if usable_cores() >= 2 else 0)
    only_float32 = ExportConfig(tflite_variants=["float32"])
    assert conversion_workers(only_float32, diffusion=True) == 0
    assert conversion_workers(ExportConfig(conversion_workers=3), diffusion=False) == 3


def test_conversion_workers_accepts_auto_or_a_count_and_nothing_else() -> None:
    for bad in (-1, True, "two", 1.5):
        with pytest.raises(ValueError, match="conversion_workers"):
            ExportConfig(conversion_workers=bad)


def test_a_conversion_that_fails_in_a_worker_comes_back_as_one_export_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "no_savedmodel"
    conversion = Conversion(tmp_path / "model_float32.tflite", "float32")
    with ConversionWorkers(1) as workers:
        [result] = convert_all(missing, [conversion], workers)
    assert isinstance(result, ExportError)
    message = str(result)
    assert "\n" not in message
    assert "float32" in message and str(missing) in message
    assert not conversion.dest.exists()


def test_workers_left_without_a_job_exit_with_the_export() -> None:
    with ConversionWorkers(2) as workers:
        processes = [worker.process for worker in workers._idle]
        assert all(p.poll() is None for p in processes)  # started, waiting for a job
    assert [p.returncode for p in processes] == [0, 0]


def test_a_failing_export_stops_the_conversions_still_running(tmp_path: Path) -> None:
    conversion = Conversion(tmp_path / "model_float16.tflite", "float16")
    with pytest.raises(RuntimeError, match="parity"), ConversionWorkers(1) as workers:
        assert workers.submit(tmp_path / "savedmodel", conversion)
        process = workers._busy[0][1].process
        raise RuntimeError("the export failed its parity thresholds")
    assert process.returncode is not None


def test_a_failing_export_does_not_wait_for_idle_workers_to_start() -> None:
    with pytest.raises(RuntimeError, match="model"), ConversionWorkers(2) as workers:
        processes = [worker.process for worker in workers._idle]
        raise RuntimeError("no model.json in the model folder")
    assert all(p.returncode is not None and p.returncode != 0 for p in processes)  # killed, not told to exit


def test_a_calibrated_conversion_stays_in_the_exporting_process(tmp_path: Path) -> None:
    calibrated = Conversion(tmp_path / "model_int8.full_integer.tflite", "int8", "full_integer", lambda: iter(()))
    with ConversionWorkers(1) as workers:
        assert not workers.submit(tmp_path, calibrated)  # a generator does not travel to another process
        assert len(workers._idle) == 1
