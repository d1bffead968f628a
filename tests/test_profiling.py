"""Phase timings (imagegen.profiling): off unless IMAGEGEN_PROFILE is set, exclusive when nested, one JSON per
process, written by the CLI itself."""

from __future__ import annotations

import contextvars
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagegen.profiling import ENV_VAR, activate_from_env, phase


def in_fresh_context(fn):
    """Run ``fn`` in a copy of the context, so a profile it activates does not leak into other tests."""
    return contextvars.copy_context().run(fn)


def test_phases_do_nothing_without_the_variable() -> None:
    def body():
        assert activate_from_env({}) is None
        with phase("anything", "work"):
            pass
        return True

    assert in_fresh_context(body)


def test_nested_phases_count_their_time_once(tmp_path: Path) -> None:
    target = tmp_path / "profile.json"

    def body():
        profile = activate_from_env({ENV_VAR: str(target)}, write_at_exit=False)
        assert profile is not None
        with phase("stage", "work"):
            time.sleep(0.05)
            with phase("model.save", "io"):
                time.sleep(0.1)
        for _ in range(2):
            with phase("train.steps", "work"):
                pass
        profile.write()
        return profile

    profile = in_fresh_context(body)
    record = json.loads(target.read_text())
    phases = record["phases"]
    assert phases["model.save"]["category"] == "io"
    assert phases["model.save"]["seconds"] >= 0.1
    assert 0.05 <= phases["stage"]["seconds"] < 0.1  # the nested save is not counted again
    assert phases["train.steps"]["count"] == 2
    assert record["entered"] is not None and record["ended"] >= record["entered"]
    assert record["process_start"] is None or record["process_start"] <= record["activated"]
    assert profile.path == target


def test_an_unknown_category_is_refused(tmp_path: Path) -> None:
    def body():
        activate_from_env({ENV_VAR: str(tmp_path / "p.json")}, write_at_exit=False)
        with pytest.raises(ValueError, match="category 'gpu'"), phase("x", "gpu"):
            pass

    in_fresh_context(body)


def test_a_folder_gets_one_file_per_process_named_after_the_dvc_stage(tmp_path: Path) -> None:
    env = {**os.environ, ENV_VAR: f"{tmp_path}/", "DVC_STAGE": "evaluate@vae"}
    proc = subprocess.run(
        [sys.executable, "-m", "imagegen", "params"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    (written,) = tmp_path.glob("*.json")
    assert written.name.startswith("evaluate@vae.")
    record = json.loads(written.read_text())
    assert record["stage"] == "evaluate@vae"
    assert record["argv"][-1] == "params"
    assert record["process_start"] <= record["activated"] <= record["ended"]


def test_a_predictors_first_call_per_input_shape_counts_as_compilation(tmp_path: Path) -> None:
    import numpy as np

    from imagegen.training.predict import first_call_per_shape_as_compile

    def body():
        profile = activate_from_env({ENV_VAR: str(tmp_path / "p.json")}, write_at_exit=False)
        predict = first_call_per_shape_as_compile(lambda x: x * 2)
        for batch in (4, 4, 3, 4, 3):
            assert predict(np.ones((batch, 2))).shape == (batch, 2)
        return profile

    phases = in_fresh_context(body).phases
    compiled = phases["predict.first_call_per_shape"]
    assert (compiled["category"], compiled["count"]) == ("compile", 2)  # shapes (4, 2) and (3, 2), once each


def test_the_console_script_freezes_the_heap_after_every_other_exit_handler(monkeypatch) -> None:
    """Shutdown collections over TensorFlow's objects cost seconds per stage process: ``main`` registers
    ``freeze_heap_at_exit`` before anything else registers a handler, so it runs last."""
    import atexit
    import gc

    from imagegen import cli

    registered = []
    monkeypatch.setattr(atexit, "register", lambda fn, *a, **k: registered.append(fn) or fn)
    monkeypatch.setattr(sys, "argv", ["imagegen", "--help"])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    assert registered[0] is cli.freeze_heap_at_exit
    try:
        cli.freeze_heap_at_exit()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_stage_process_exits_with_its_output_written_and_its_exit_status(tmp_path: Path) -> None:
    """The frozen heap changes nothing a caller sees: files written, profile record written, status kept."""
    env = {**os.environ, ENV_VAR: f"{tmp_path}/", "DVC_STAGE": "params"}
    run = {"env": env, "capture_output": True, "text": True, "cwd": tmp_path}
    ok = subprocess.run([sys.executable, "-m", "imagegen", "params"], **run)
    assert ok.returncode == 0 and "seed:" in ok.stdout
    (record,) = tmp_path.glob("params.*.json")
    assert json.loads(record.read_text())["ended"] is not None
    bad = subprocess.run([sys.executable, "-m", "imagegen", "params", "-S", "nope=1"], **run)
    assert bad.returncode == 2 and "nope" in bad.stderr
