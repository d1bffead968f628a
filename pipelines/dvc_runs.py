"""DVC commands as subprocesses of the project folder: the flow's only way to run a stage.

A stage runs through ``dvc repro --single-item <stage>`` (DVC checks what is stale, runs the stage's ``cmd``,
caches the outputs and updates ``dvc.lock``), exactly as a person typing ``dvc repro`` would. A run with
parameter overrides runs through ``dvc exp run --temp --name <name> -S ...`` instead: DVC builds it in a
temporary copy and records it as a named experiment, so the overrides never land in the tracked
``params.yaml`` and ``dvc exp show`` lists them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from imagegen.errors import ImagegenError

Log = Callable[[str], None]


def lock_md5(root: Path) -> str:
    """md5 of ``dvc.lock`` (``"none"`` before the first ``dvc repro``): which pipeline state a run saw."""
    lock = Path(root) / "dvc.lock"
    return hashlib.md5(lock.read_bytes()).hexdigest() if lock.is_file() else "none"


def stage_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment, this interpreter's ``bin`` first on PATH (``imagegen`` and ``dvc``), and
    ``extra`` (the MLflow parent run id, run tags, the tracking URI)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_dvc(args: Sequence[str], root: Path, env: Mapping[str, str], log: Log) -> str:
    """``dvc <args>`` in ``root``; its output streamed line by line to ``log``; the whole output returned.

    A failing command raises with the command, the exit status and the output's last lines.
    """
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.Popen(cmd, cwd=root, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        log(lines[-1])
    status = proc.wait()
    if status != 0:
        tail = "\n".join(lines[-20:])
        raise ImagegenError(f"`dvc {' '.join(args)}` in {root} exited {status}:\n{tail}")
    return "\n".join(lines)


def repro_stage(stage: str, root: Path, env: Mapping[str, str], log: Log) -> str:
    """Bring one stage up to date (a no-op when DVC finds nothing changed)."""
    return run_dvc(["repro", "--single-item", stage], root, env, log)


def experiment_run(
    name: str,
    overrides: Sequence[str],
    targets: Sequence[str],
    root: Path,
    env: Mapping[str, str],
    log: Log,
) -> str:
    """``dvc exp run --temp`` of ``targets`` (and their upstream) with ``-S`` overrides, named ``name``."""
    args = ["exp", "run", "--temp", "--name", name]
    for override in overrides:
        args += ["-S", override]
    return run_dvc([*args, *targets], root, env, log)


def experiment_ref(name: str, root: Path) -> str:
    """The git ref DVC stored experiment ``name`` under (``refs/exps/../<name>``)."""
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    refs = [ref for ref in out if ref.rsplit("/", 1)[-1] == name]
    if len(refs) != 1:
        raise ImagegenError(f"DVC experiment {name!r}: expected one ref under refs/exps, found {refs}")
    return refs[0]


def read_text(root: Path, path: Path | str, rev: str | None) -> str | None:
    """A git-tracked file of the workspace (``rev`` None) or of a commit; None when it is not there."""
    if rev is None:
        file = Path(root) / path
        return file.read_text() if file.is_file() else None
    proc = subprocess.run(["git", "show", f"{rev}:{Path(path).as_posix()}"], cwd=root, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None
