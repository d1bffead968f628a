"""A pipeline run reaches the team: the deployment's run is published as a DVC experiment (git remote: a bare
repository; DVC remote: the default folder remote), and a fresh clone gets its models without training.

Real components only: ``prefect server start``, a process work pool, ``prefect deploy`` of prefect.yaml and
``prefect worker start``; a real DVC lock held by another process; git and DVC as a teammate types them.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from test_ops_support import (
    BIN,
    TINY_PARAMS,
    Processes,
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
# Held by a process that is not DVC, the way DVC holds it (zc.lockfile: an flock, the pid written in the file).
HOLD_DVC_LOCK = (
    "import sys, time, zc.lockfile\n"
    "lock = zc.lockfile.LockFile('.dvc/tmp/lock')\n"
    "print('held', flush=True)\n"
    "time.sleep(float(sys.argv[1]))\n"
)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """One real Prefect server for this module's tests: its API URL and the environment a client needs."""
    home = tmp_path_factory.mktemp("prefect")
    with processes(home / "logs") as procs:
        yield start_prefect_server(procs, home / "server")


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _hold_dvc_lock(procs: Processes, project: Path, seconds: float) -> subprocess.Popen:
    """Another process holding DVC's lock in ``project`` until it is stopped (or ``seconds`` pass)."""
    (project / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", HOLD_DVC_LOCK, str(seconds)]
    holder = procs.start("dvc-lock-holder", cmd, project, clean_env(project))
    wait_for(lambda: "held" in procs.log("dvc-lock-holder"), 60, "the lock holder to take DVC's lock", every=0.2)
    return holder


def _team_git_remote(project: Path, bare: Path) -> str:
    """A bare repository as the team's git remote ``origin`` of ``project``, holding its branch; the branch."""
    git(["init", "-q", "--bare", str(bare)], project.parent)
    branch = git(["rev-parse", "--abbrev-ref", "HEAD"], project).strip()
    git(["remote", "add", "origin", str(bare)], project)
    git(["push", "-q", "origin", branch], project)
    return branch


def _deploy_with(project: Path, **parameters: object) -> None:
    """The copy's CPU deployment with these parameters and no schedule (no nightly run fires during the test);
    committed, as a team would commit its deployment."""
    spec = yaml.safe_load((project / "prefect.yaml").read_text())
    (deployment,) = [d for d in spec["deployments"] if d["name"] == DEPLOYMENT.split("/")[1]]
    deployment["parameters"] = {**deployment["parameters"], **parameters}
    deployment["schedules"] = []
    (project / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    git(["commit", "-qam", "deployment: publish to origin"], project)


class Api:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)

    def run(self, run_id: str) -> dict:
        return self.http.get(f"/flow_runs/{run_id}").raise_for_status().json()

    def log_entries(self, run_id: str) -> list[dict]:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
        entries: list[dict] = []
        while True:
            got = self.http.post("/logs/filter", json={**body, "offset": len(entries)}).raise_for_status().json()
            entries += got
            if len(got) < 200:
                return entries

    def logs(self, run_id: str) -> list[str]:
        return [f"{entry['level']} {entry['message']}" for entry in self.log_entries(run_id)]

    def final_logs(self, run_id: str) -> list[str]:
        """The run's logs once its last line (the flow's ``Finished in state ...``) reached the server: a run's
        logs are shipped in batches and may arrive after its final state."""

        def complete() -> list[str] | None:
            entries = self.log_entries(run_id)
            last = [e for e in entries if e["task_run_id"] is None and e["message"].startswith("Finished in state")]
            return [f"{e['level']} {e['message']}" for e in entries] if last else None

        return wait_for(complete, 120, "the run's last log line", every=1)

    def task_names(self, run_id: str) -> list[str]:
        body = {"flow_runs": {"id": {"any_": [run_id]}}}
        got = self.http.post("/task_runs/filter", json=body).raise_for_status().json()
        return [t["name"] for t in sorted(got, key=lambda t: t["start_time"] or t["expected_start_time"])]

    def artifact(self, key: str) -> str:
        body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
        (found,) = self.http.post("/artifacts/filter", json=body).raise_for_status().json()
        return found["data"]


# Tracking stays on (the MLflow runs get the DVC stages' names); one tiny training and its upstream only.
PARAMS = {**TINY_PARAMS, "pipeline": {"progress_every_s": 1}}


# A few minutes on 2 idle cores (three stage processes and a sample import TensorFlow); longer when shared.
@pytest.mark.timeout(3600)
def test_a_fresh_clone_gets_the_nightly_model_without_training(
    tmp_path: Path, prefect_api: tuple[str, dict[str, str]]
) -> None:
    api_url, client = prefect_api
    project = make_project(tmp_path / "project", PARAMS)
    git(["config", "user.email", "worker@example.org"], project)  # the worker commits experiments
    git(["config", "user.name", "imagegen worker"], project)
    # No dvc.lock committed yet: the experiment's lock is this run's alone (a run of two stages does not
    # refresh the other stages' entries, whose outputs this copy never built).
    git(["rm", "-q", "dvc.lock"], project)
    bare = tmp_path / "team.git"
    _deploy_with(project, stages=["train_vae"], promote=False, publish={"git_remote": "origin"})
    branch = _team_git_remote(project, bare)

    with processes(tmp_path / "logs") as procs:
        env = clean_env(project, PWD=str(project), **client)
        prefect = [str(BIN / "prefect"), "--no-prompt"]
        pools = run([*prefect, "work-pool", "ls"], project, env)
        if POOL not in pools:
            run([*prefect, "work-pool", "create", POOL, "--type", "process"], project, env)
        run([*prefect, "deploy", "--name", DEPLOYMENT.split("/")[1]], project, env)
        worker = procs.start("worker", [*prefect, "worker", "start", "--pool", POOL], project, env)
        api = Api(api_url)

        # Someone's `dvc repro` holds DVC's lock when the run starts: the run waits and names the holder.
        holder = _hold_dvc_lock(procs, project, 900)
        started = run([*prefect, "deployment", "run", DEPLOYMENT], project, env)
        run_id = next(w for w in started.split() if w.count("-") == 4 and len(w) == 36)

        def waiting_line() -> str | None:
            assert worker.poll() is None, "worker exited:\n" + procs.log("worker")
            return next((line for line in api.logs(run_id) if "waiting for DVC's lock" in line), None)

        line = wait_for(waiting_line, 900, "the run to wait for DVC's lock", every=2)
        assert f"PID {holder.pid}" in line, line
        assert api.run(run_id)["state_type"] == "RUNNING"
        holder.terminate()
        holder.wait(timeout=30)

        def done() -> dict | None:
            assert worker.poll() is None, "worker exited:\n" + procs.log("worker")
            flow_run = api.run(run_id)
            return flow_run if flow_run["state_type"] in FINAL else None

        flow_run = wait_for(done, 2400, "the deployment's run to finish", every=3)
        logs = api.final_logs(run_id)
        assert flow_run["state_type"] == "COMPLETED", "\n".join(logs[-80:]) + procs.log("worker")[-4000:]
        published = api.artifact("imagegen-publish")
        tasks = api.task_names(run_id)

    # The run: waited, trained, showed the trainer's progress, published, and left the worker's folder clean.
    assert any("DVC's lock is free" in line for line in logs), logs
    assert any(re.search(r"\bvae\b.*\b3/3\b", line) for line in logs), "no progress line of train_vae"
    (name,) = set(re.findall(r"nightly-\d{8}-[0-9a-f]{8}", published))
    assert tasks == ["ingest", "train_vae", f"publish-{name}"], tasks
    commit = re.search(r"`([0-9a-f]{40})`", published)
    assert commit is not None, published
    assert commit.group(1) in git(["ls-remote", str(bare)], tmp_path), "the experiment is not on the git remote"
    assert git(["status", "--porcelain"], project) == "", "the worker's folder is not clean"
    _assert_runs_named_after_stages(project, run_id)

    # A teammate's fresh clone: the published run's models from the remotes, then sampling. No training.
    clone = tmp_path / "clone"
    git(["clone", "-q", "-b", branch, str(bare), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    teammate = clean_env(clone)
    run([sys.executable, "-m", "pipelines.publish", "get", name], clone, teammate)
    assert _digests(clone / "models" / "vae") == _digests(project / "models" / "vae")
    assert "up to date" in dvc(["status", "train_vae"], clone, teammate), "the clone would train again"
    run([str(BIN / "imagegen"), "sample", "--model", "models/vae", "--out", "samples", "--n", "4"], clone, teammate)
    assert (clone / "samples" / "grid.png").is_file()
    assert not (clone / "checkpoints").exists() and not (clone / "mlflow.db").exists(), "something trained here"


def _assert_runs_named_after_stages(project: Path, flow_run_id: str) -> None:
    """The MLflow runs of the flow run are named after their DVC stages."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("imagegen.stage") != "pipeline")
    assert children == ["ingest", "train_vae"], children


def test_pull_without_the_team_remote_says_what_to_configure_in_one_line(tmp_path: Path) -> None:
    """A clone on another machine has no ``../imagegen-dvc-remote``: one line naming the remote and the fix."""
    project = make_project(tmp_path / "machine-b" / "project", {"data": {"image_size": 8}})
    env = clean_env(project)
    missing = tmp_path / "machine-b" / "imagegen-dvc-remote"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.publish", "pull"], cwd=project, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: DVC remote 'local' is {missing}, which does not exist: point it at the team's remote with "
        "`dvc remote modify --local local url <path>`"
    ]

    team = tmp_path / "team-dvc"
    team.mkdir()
    dvc(["remote", "modify", "--local", "local", "url", str(team)], project, env)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.publish", "pull", "ingest"], cwd=project, env=env, capture_output=True
    )
    assert b"which does not exist" not in proc.stdout + proc.stderr


def test_a_run_by_hand_names_the_holder_of_dvcs_lock_in_one_line(
    tmp_path: Path, prefect_api: tuple[str, dict[str, str]]
) -> None:
    """`python -m pipelines.flow` while another process holds DVC's lock: it waits ``--lock-timeout-s``, then
    fails with one line naming the holder, no traceback, nothing run."""
    _, client = prefect_api
    project = make_project(tmp_path / "project", {**TINY_PARAMS, "tracking": {"enabled": False}})
    with processes(tmp_path / "logs") as procs:
        holder = _hold_dvc_lock(procs, project, 600)
        proc = subprocess.run(
            [sys.executable, "-m", "pipelines.flow", "--stages", "ingest", "--lock-timeout-s", "3"],
            cwd=project,
            env=clean_env(project, **client),
            capture_output=True,
            text=True,
            timeout=600,
        )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: DVC's lock in {project} is held by PID {holder.pid} "), output
    assert "Traceback" not in output, output
    assert not (project / "data").exists()


CRASHING_STAGE = """import sys
print("step 1 of 2", flush=True)
print("loading the checkpoint", file=sys.stderr, flush=True)
raise ValueError("checkpoint step 7 is newer than the run's 5 steps")
"""


def test_a_failing_stage_is_one_line_its_cause_with_the_traceback_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the flow logs of a stage that crashes: its output at INFO as it comes, the Python traceback at
    DEBUG, and the failure as one line whose cause is the stage's last stderr line."""
    import logging

    from pipelines import dvc_runs

    project = tmp_path / "project"
    project.mkdir()
    git(["init", "-q"], project)
    dvc(["init", "-q"], project, clean_env(project))
    (project / "crash.py").write_text(CRASHING_STAGE)
    stage = {"cmd": f"{sys.executable} crash.py", "deps": ["crash.py"], "outs": ["out"]}
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"crash": stage}}))
    logger = logging.getLogger("test.stage")
    with caplog.at_level(logging.DEBUG, logger="test.stage"), pytest.raises(dvc_runs.DvcCommandFailed) as failed:
        dvc_runs.repro_stage("crash", project, dvc_runs.stage_env({}), logger, dvc_runs.Waiting(lock_timeout_s=5))

    cause = failed.value.cause
    assert cause.startswith("ValueError: checkpoint step 7 is newer than the run's 5 steps ("), cause
    assert cause.endswith("crash.py, exited with 1)"), cause
    levels = {record.getMessage(): record.levelno for record in caplog.records}
    assert levels["step 1 of 2"] == levels["loading the checkpoint"] == logging.INFO
    assert levels["Traceback (most recent call last):"] == logging.DEBUG
    assert levels["ValueError: checkpoint step 7 is newer than the run's 5 steps"] == logging.INFO
    frames = [level for message, level in levels.items() if message.lstrip().startswith('File "')]
    assert frames and set(frames) == {logging.DEBUG}, levels
