"""A stage's runs are logged from a child process holding the MLflow client, into a real SQLite store.

The child records what an in-process run records, ends a run FAILED when the stage's body raises (an
interrupted one too: the child ignores Ctrl-C), raises the store's failures in the stage as one line, and
never outlives the stage, even a killed one. A stage started by the CLI leaves mlflow to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from imagegen.config import TrackingConfig
from imagegen.tracking import TrackingProcess, TrackingStoreError, start_run
from tests.test_bad_input_tracking import FIRST_REVISION, imagegen, lines, mlflow_store

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _log_everything(run, tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text('{"fid": 1.5}\n')
    run.log_params({"train.batch_size": 64, "data.name": "digits"})
    run.log_metrics({"loss": 0.25, "kl": np.float32(3.5)}, step=10)
    run.set_tags({"weights_digest": "sha256:abc", "resumed_from": None})
    run.log_artifact(tmp_path / "report.json", "evaluate")
    run.log_image(np.zeros((4, 4, 3), np.uint8), "grid.png")
    run.log_dict({"a": [1, 2]}, "facts.json")


def _recorded(uri: str, run_id: str) -> dict:
    """What the store holds of a run, without what differs between any two runs (ids, times)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"}
    return {
        "status": run.info.status,
        "params": run.data.params,
        "metrics": {k: [(m.value, m.step) for m in client.get_metric_history(run_id, k)] for k in run.data.metrics},
        "tags": {k: v for k, v in tags.items() if not k.startswith("mlflow.") or k == "mlflow.parentRunId"},
        "artifacts": sorted(
            f.path for top in client.list_artifacts(run_id) for f in [top, *client.list_artifacts(run_id, top.path)]
        ),
    }


def test_a_run_logged_from_the_tracking_process_records_what_an_in_process_run_records(
    monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGEGEN_MLFLOW_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("IMAGEGEN_RUN_TAGS", raising=False)
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}")
    with start_run(cfg, "here", stage="test", params={"seed": 0}, tags={"device": "cpu"}) as run:
        _log_everything(run, tmp_path)
        here = run.run_id
    with (
        TrackingProcess(cfg, cfg.uri) as process,
        start_run(cfg, "there", stage="test", params={"seed": 0}, tags={"device": "cpu"}, process=process) as run,
    ):
        _log_everything(run, tmp_path)
        there = run.run_id
    assert there != here
    recorded = _recorded(cfg.uri, there)
    assert recorded == _recorded(cfg.uri, here)
    assert recorded["status"] == "FINISHED" and recorded["params"]["seed"] == "0"
    assert recorded["metrics"] == {"loss": [(0.25, 10)], "kl": [(3.5, 10)]}
    assert recorded["artifacts"] == ["evaluate", "evaluate/report.json", "facts.json", "grid.png"]
    assert recorded["tags"]["imagegen.stage"] == "test" and recorded["tags"]["weights_digest"] == "sha256:abc"


def test_child_runs_of_one_stage_share_its_tracking_process(monkeypatch, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMAGEGEN_MLFLOW_PARENT_RUN_ID", raising=False)
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}")
    with (
        TrackingProcess(cfg, cfg.uri) as process,
        start_run(cfg, "parent", stage="distill", process=process) as parent,
        start_run(cfg, "round1", stage="distill", parent_run_id=parent.run_id, process=process) as child,
    ):
        child.log_metrics({"loss": 1.0})
    client = MlflowClient(tracking_uri=cfg.uri)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert {client.get_run(r.run_id).info.status for r in (parent, child)} == {"FINISHED"}


def test_a_failing_body_ends_the_run_failed_through_the_tracking_process(monkeypatch, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}")
    with (
        TrackingProcess(cfg, cfg.uri) as process,
        pytest.raises(RuntimeError, match="boom"),
        start_run(cfg, "boom", stage="test", process=process) as run,
    ):
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=cfg.uri).get_run(run.run_id).info.status == "FAILED"


def test_a_call_the_child_cannot_carry_out_raises_in_the_stage_and_the_run_goes_on(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'm.db'}")
    with TrackingProcess(cfg, cfg.uri) as process, start_run(cfg, "x", stage="test", process=process) as run:
        with pytest.raises(FileNotFoundError):
            run.log_artifact(tmp_path / "missing.json")
        run.log_metrics({"loss": 1.0})  # the child is still there


def test_a_store_the_child_cannot_open_is_one_line_at_the_first_run(tmp_path: Path) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db", FIRST_REVISION)  # passes the check; MLflow refuses it
    cfg = TrackingConfig(uri=uri)
    with (
        TrackingProcess(cfg, uri) as process,
        pytest.raises(TrackingStoreError, match=f"older than this MLflow.*mlflow db upgrade {uri}"),
        start_run(cfg, "x", stage="test", process=process),
    ):
        pass


def test_bad_input_a_stage_on_a_store_mlflow_refuses_is_one_line_from_the_cli(tmp_path: Path) -> None:
    uri = mlflow_store(tmp_path / "mlflow.db", FIRST_REVISION)
    result = imagegen("ingest", "-S", f"tracking.uri={uri}", "-S", f"data.processed_dir={tmp_path / 'p'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = lines(result.stderr)
    assert line.startswith("error: MLflow store") and f"mlflow db upgrade {uri}" in line


def _script(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    """``body`` in a fresh Python process (its own session: signals sent to it reach no one else), which prints
    the tracking child's pid first. SIGINT raises KeyboardInterrupt there as it does in a terminal, even when the
    tests run as a background job, whose processes inherit SIGINT ignored."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
        from imagegen.config import TrackingConfig
        from imagegen.tracking import TrackingProcess, start_run
        cfg = TrackingConfig(uri="sqlite:///{tmp_path / "m.db"}")
        process = TrackingProcess(cfg, cfg.uri)
        print(process._proc.pid, flush=True)
        """
    ) + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )


def _gone(pid: int, within_s: float = 20.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as stat:  # a zombie (exited, not yet reaped by init) has gone too
            if stat.read().split(") ", 1)[1].startswith("Z"):
                return True
        time.sleep(0.1)
    return False


def test_the_tracking_process_exits_when_its_stage_is_killed(tmp_path: Path) -> None:
    proc = _script(tmp_path, "with start_run(cfg, 'x', stage='test', process=process):\n    time.sleep(600)\n")
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    time.sleep(1.0)
    proc.kill()
    proc.wait(timeout=30)
    assert _gone(child)


def test_an_interrupted_stage_still_ends_its_run_failed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    proc = _script(
        tmp_path,
        """
        try:
            with start_run(cfg, "x", stage="test", process=process) as run:
                print(run.run_id, flush=True)
                os.killpg(os.getpgrp(), signal.SIGINT)  # Ctrl-C reaches the whole process group
                time.sleep(30)
        except KeyboardInterrupt:
            process.close()
            sys.exit(130)
        """,
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    run_id = proc.stdout.readline().strip()
    assert proc.wait(timeout=60) == 130
    assert _gone(child)
    assert MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}").get_run(run_id).info.status == "FAILED"


def test_a_stage_started_by_the_cli_leaves_mlflow_to_its_tracking_process(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import json, sys
        from imagegen.cli import main
        sys.argv = ["imagegen", "ingest", "-S", "data.processed_dir=processed"]
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("mlflow", "sqlalchemy", "alembic"))))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("imagegen").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["imagegen.stage"] == "ingest"
