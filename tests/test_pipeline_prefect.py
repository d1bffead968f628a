"""The Prefect flow is derived from dvc.yaml: its tasks are DVC's stages, in an order DVC accepts.

Runs of the flow on a real server (scheduler, worker, concurrency) are in test_ops_prefect_schedule.py;
here: the stage plan, overrides recorded as a DVC experiment, and bad params failing before any work.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_ops_support import (
    REPO,
    TINY_PARAMS,
    clean_env,
    dvc,
    git,
    make_project,
    processes,
    start_prefect_server,
)

from pipelines.dvc_graph import read_stages, with_upstream


def test_prefect_server_app_imports() -> None:
    """A bad fastapi pin breaks `prefect server start` at import time; this catches it in CI."""
    import prefect.server.api.server as server

    assert callable(server.create_app)


def _dvc_edges(root: Path) -> set[tuple[str, str]]:
    """(upstream, downstream) pairs as ``dvc dag --dot`` prints them."""
    dot = dvc(["dag", "--dot"], root, clean_env(root))
    return set(re.findall(r'"([^"]+)" -> "([^"]+)"', dot))


def test_flow_stages_are_exactly_dvc_yaml_stages_in_an_order_dvc_accepts() -> None:
    names = [s.name for s in read_stages(REPO)]
    listed = dvc(["stage", "list", "--name-only"], REPO, clean_env(REPO)).split()
    assert sorted(names) == sorted(listed) and len(names) == len(set(names))
    assert "evaluate@ddpm_student" in names and "register@vae" in names  # foreach items, one task each
    position = {name: i for i, name in enumerate(names)}
    edges = _dvc_edges(REPO)
    assert edges, "dvc dag printed no edges"
    for upstream, downstream in edges:
        assert position[upstream] < position[downstream], (upstream, downstream)


def test_the_plan_follows_an_edited_dvc_yaml_and_params(tmp_path: Path) -> None:
    """No stage list lives in the flow: a new dvc.yaml stage and a shorter evaluate list in params.yaml
    are the next run's tasks."""
    project = make_project(tmp_path / "project")
    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    spec["stages"]["summary"] = {
        "cmd": "cat reports/evaluate_vae/metrics.json > reports/summary.json",
        "deps": ["reports/evaluate_vae/metrics.json"],
        "outs": [{"reports/summary.json": {"cache": False}}],
    }
    (project / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["models"] = {"vae": "models/vae"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    stages = read_stages(project)
    names = [s.name for s in stages]
    assert [n for n in names if n.startswith("evaluate@")] == ["evaluate@vae"]
    assert names.index("summary") > names.index("evaluate@vae")
    needed = [s.name for s in with_upstream(stages, ["summary"])]
    assert needed == ["ingest", "train_vae", "train_features", "evaluate@vae", "summary"]


def test_bad_params_fail_with_the_params_message_before_any_work(tmp_path: Path) -> None:
    from imagegen.errors import ConfigError
    from pipelines.flow import imagegen_pipeline

    project = make_project(tmp_path / "project")
    with pytest.raises(ConfigError, match="train.batch_size"):
        imagegen_pipeline.fn(overrides=["train.batch_size=-3"], project_dir=str(project))
    assert not (project / "data").exists()


RUN_FLOW = """
import json, sys
from pipelines.flow import imagegen_pipeline
out = imagegen_pipeline(overrides=sys.argv[1:], stages=["ingest"], project_dir=".")
print("RESULT " + json.dumps(out))
"""


def test_overrides_run_as_a_dvc_experiment_and_leave_the_workspace_alone(tmp_path: Path) -> None:
    """A run with -S overrides: the experiment is in `dvc exp show`, params.yaml and dvc.lock are as
    committed, and the MLflow parent run carries the overrides and the experiment's name."""
    project = make_project(tmp_path / "project", {**TINY_PARAMS, "data": {"image_size": 8}})
    before = git(["status", "--porcelain"], project)
    with processes(tmp_path / "logs") as procs:
        _, client = start_prefect_server(procs, tmp_path / "prefect")
        env = clean_env(project, **client)
        proc = subprocess.run(
            [sys.executable, "-c", RUN_FLOW, "data.image_size=12"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    name = result["experiment"]
    assert name.startswith("prefect-") and result["stages"] == ["ingest"]

    assert git(["status", "--porcelain"], project) == before  # nothing tracked was rewritten
    assert yaml.safe_load((project / "params.yaml").read_text())["data"]["image_size"] == 8
    shown = json.loads(dvc(["exp", "show", "--json"], project, clean_env(project)))
    exps = [e for rev in shown for e in (rev.get("experiments") or [])]
    (exp,) = [e for e in exps if e.get("name") == name]
    data = exp["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["data"]["image_size"] == 12

    from mlflow import MlflowClient

    parent = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_run(result["mlflow_parent_run_id"])
    assert json.loads(parent.data.tags["pipeline.overrides"]) == ["data.image_size=12"]
    assert parent.data.tags["dvc.experiment"] == name
    assert parent.info.status == "FINISHED"
