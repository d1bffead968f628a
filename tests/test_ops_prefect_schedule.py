"""The production path of prefect.yaml, for real: a Prefect server (scheduler on), a process work pool,
``prefect deploy --name imagegen-nightly`` and ``prefect worker start``; the scheduler's run and a manual run
that must wait for the deployment's single concurrency slot; then the project is exactly as ``dvc repro``
leaves it.

No prefect_test_harness: every process is started here, on loopback, and stopped at the end.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import httpx
import pytest
import yaml
from test_ops_support import (
    BIN,
    TINY_PARAMS,
    clean_env,
    dvc,
    git,
    make_project,
    processes,
    run,
    start_prefect_server,
    wait_for,
)

POOL = "imagegen-process"
DEPLOYMENT = "imagegen-pipeline/imagegen-nightly"
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _due_soon(project: Path, seconds: int) -> dt.datetime:
    """Make the copy's nightly schedule a daily interval anchored ``seconds`` from now (nothing else of
    prefect.yaml changes): exactly one scheduled run falls due during the test."""
    spec = yaml.safe_load((project / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == DEPLOYMENT.split("/")[1])
    assert deployment["schedules"][0]["cron"] == "0 3 * * *"
    anchor = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).replace(microsecond=0)
    deployment["schedules"] = [{"interval": 86400, "anchor_date": anchor.isoformat(), "timezone": "UTC"}]
    (project / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    git(["commit", "-qam", "schedule due soon"], project)
    return anchor


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def deployment(self, name: str) -> dict:
        flow, dep = name.split("/")
        return self.http.get(f"/deployments/name/{flow}/{dep}").raise_for_status().json()

    def runs(self, deployment_id: str) -> list[dict]:
        body = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
        return self.http.post("/flow_runs/filter", json=body).raise_for_status().json()

    def run(self, run_id: str) -> dict:
        return self.http.get(f"/flow_runs/{run_id}").raise_for_status().json()

    def states(self, run_id: str) -> list[str]:
        got = self.http.get("/flow_run_states/", params={"flow_run_id": run_id}).raise_for_status().json()
        return [s["name"] for s in sorted(got, key=lambda s: s["timestamp"])]

    def task_names(self, run_id: str) -> list[str]:
        body = {"flow_runs": {"id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
        got = self.http.post("/task_runs/filter", json=body).raise_for_status().json()
        return [t["name"] for t in sorted(got, key=lambda t: t["start_time"] or t["expected_start_time"])]


# The tiny params, and one model evaluated, exported and shipped: the graph follows params (9 stages).
PARAMS = {
    **TINY_PARAMS,
    "evaluate": {**TINY_PARAMS["evaluate"], "models": {"vae": "models/vae"}},
    "export": {**TINY_PARAMS["export"], "ship": {"vae": "models/vae"}},
}


# About 8 min on 2 idle cores; a machine shared with other jobs needs several times that.
@pytest.mark.timeout(3600)
def test_scheduled_run_fires_a_second_run_waits_and_dvc_is_clean(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", PARAMS)
    stages = dvc(["stage", "list", "--name-only"], project, clean_env(project)).split()
    lock_before = _md5(project / "dvc.lock")

    with processes(tmp_path / "logs") as procs:
        api_url, client = start_prefect_server(procs, tmp_path / "prefect")
        # COLUMNS: rich tables of the CLI (`prefect artifact ls`) print whole keys, not "imagegen-evalu…".
        env = clean_env(project, PWD=str(project), COLUMNS="250", **client)
        prefect = [str(BIN / "prefect"), "--no-prompt"]
        run([*prefect, "work-pool", "create", POOL, "--type", "process"], project, env)
        # The schedule is set after the slow parts of starting, just before `prefect deploy`.
        anchor = _due_soon(project, 120)
        deployed = run([*prefect, "deploy", "--name", "imagegen-nightly"], project, env)  # as the README deploys it
        assert "imagegen-nightly" in deployed, deployed
        worker = procs.start("worker", [*prefect, "worker", "start", "--pool", POOL], project, env)
        api = Api(api_url)
        dep = api.deployment(DEPLOYMENT)
        assert dep["global_concurrency_limit"]["limit"] == 1, dep
        assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE", dep

        # The scheduler creates the run by itself; the worker picks it up when it falls due.
        def first_running() -> dict | None:
            assert worker.poll() is None, "worker exited:\n" + procs.log("worker")
            runs = [r for r in api.runs(dep["id"]) if r["auto_scheduled"]]
            due = [r for r in runs if r["state_type"] in ("RUNNING", *FINAL)]
            return due[0] if due else None

        first = wait_for(first_running, 240, "the scheduler's run to start on the worker", every=2)
        assert dt.datetime.fromisoformat(first["expected_start_time"]) == anchor

        manual = run([*prefect, "deployment", "run", DEPLOYMENT], project, env)
        second_id = next(w for w in manual.split() if w.count("-") == 4 and len(w) == 36)

        def done(run_id: str) -> dict | None:
            assert worker.poll() is None, "worker exited:\n" + procs.log("worker")
            flow_run = api.run(run_id)
            return flow_run if flow_run["state_type"] in FINAL else None

        first = wait_for(lambda: done(first["id"]), 2400, "the scheduled run to finish", every=3)
        assert first["state_type"] == "COMPLETED", (
            api.states(first["id"]),
            procs.log("worker")[-6000:],
        )
        second = wait_for(lambda: done(second_id), 1200, "the manual run to finish", every=3)
        assert second["state_type"] == "COMPLETED", (
            api.states(second_id),
            procs.log("worker")[-6000:],
        )

        # The manual run waited for the slot: held back while the first ran, started after it ended.
        assert "AwaitingConcurrencySlot" in api.states(second_id), api.states(second_id)
        assert second["start_time"] >= first["end_time"], (first, second)
        # One task per dvc.yaml stage, in an order DVC accepts, then a promotion per shipped model.
        tasks = api.task_names(first["id"])
        assert [t for t in tasks if not t.startswith("promote-")] == stages
        assert [t for t in tasks if t.startswith("promote-")] == ["promote-imagegen-vae-digits"]

        listing = {
            what: run([*prefect, *what.split()], project, env)
            for what in ("deployment ls", "flow-run ls", "artifact ls")
        }
        for key in (
            "imagegen-evaluation",
            "imagegen-export",
            "imagegen-promotion",
            "imagegen-mlflow-runs",
            "imagegen-models",
        ):
            assert key in listing["artifact ls"], listing["artifact ls"]
        wall = dt.datetime.fromisoformat(first["end_time"]) - dt.datetime.fromisoformat(first["start_time"])
        print(
            f"\nscheduled tiny run: {wall.total_seconds():.0f} s wall; second run "
            f"{second['total_run_time']:.0f} s; states of the second: {api.states(second_id)}"
        )
        print(listing["artifact ls"])

    status = dvc(["status"], project, clean_env(project))
    print("dvc status:", status.strip())
    assert "up to date" in status, status
    assert _md5(project / "dvc.lock") != lock_before
    assert git_clean(project), "a Prefect run must not leave tracked files changed outside dvc.lock/reports"


def git_clean(project: Path) -> bool:
    """Only what ``dvc repro`` itself rewrites (dvc.lock and the uncached reports) may differ from HEAD."""
    changed = [line[3:] for line in git(["status", "--porcelain"], project).splitlines()]
    return all(p == "dvc.lock" or p.startswith("reports/") or p == "mlflow.db" for p in changed)
