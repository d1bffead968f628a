"""DVC commands as subprocesses of the project folder: the flow's only way to run a stage.

A stage runs through ``dvc repro --single-item <stage>`` (DVC checks what is stale, runs the stage's ``cmd``,
caches the outputs and updates ``dvc.lock``), exactly as a person typing ``dvc repro`` would. A run with
parameter overrides runs through ``dvc exp run --temp --name <name> -S ...`` instead: DVC builds it in a
temporary copy and records it as a named experiment, so the overrides never land in the tracked
``params.yaml`` and ``dvc exp show`` lists them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen.errors import ImagegenError
from pipelines import dvc_lock
from pipelines.stage_log import OutputLog, failure_cause, pieces, progress_env

Logger = logging.Logger | logging.LoggerAdapter[Any]
QUIET = logging.getLogger("pipelines.dvc_runs.quiet")
QUIET.disabled = True
LOCK_MESSAGES = ("Unable to acquire lock", "is busy, it is being blocked by")


class DvcCommandFailed(ImagegenError):
    """A DVC command (a stage) failed: ``cause`` is the one line that says why (the stage's last stderr line),
    ``output`` the command's last lines."""

    def __init__(self, args: Sequence[str], cause: str, output: str = "") -> None:
        super().__init__(f"`dvc {' '.join(args)}` failed: {cause}")
        self.cause = cause
        self.output = output


@dataclass(frozen=True)
class Waiting:
    """How a DVC command waits for another process's DVC lock (``pipeline.lock_timeout_s``) and how often a
    running stage's progress is logged (``pipeline.progress_every_s``)."""

    lock_timeout_s: float = 3600.0
    progress_every_s: float = 30.0


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


def _stream(args: Sequence[str], root: Path, env: Mapping[str, str], out: OutputLog) -> int:
    """Run ``dvc <args>``, feeding its stdout and stderr to ``out`` piece by piece as they come; its status."""
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.Popen(cmd, cwd=root, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None and proc.stderr is not None

    def pump(fd: int, name: str) -> None:
        for text, frame in pieces(fd):
            out.piece(text, frame, name)

    readers = [
        threading.Thread(target=pump, args=(proc.stdout.fileno(), "stdout"), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr.fileno(), "stderr"), daemon=True),
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    proc.stdout.close()
    proc.stderr.close()
    return proc.wait()


def run_dvc(
    args: Sequence[str],
    root: Path,
    env: Mapping[str, str],
    logger: Logger,
    waiting: Waiting | None = None,
    quiet: bool = False,
) -> str:
    """``dvc <args>`` in ``root`` once no other process holds DVC's lock, its output logged line by line as it
    comes (``quiet``: only returned, for a caller that logs it as one block); the output returned.

    A command that still meets another process's lock (it took the lock between the check and the start) waits
    again, within the same ``lock_timeout_s``. A failing command raises :class:`DvcCommandFailed` whose message
    is the one-line cause (:func:`pipelines.stage_log.failure_cause`).
    """
    waiting = waiting or Waiting()
    root = Path(root)
    deadline = time.monotonic() + waiting.lock_timeout_s
    while True:
        left = max(0.0, deadline - time.monotonic())
        dvc_lock.wait_until_free(root, left, logger.info)
        out = OutputLog(QUIET if quiet else logger, waiting.progress_every_s)
        status = _stream(args, root, env, out)
        if status == 0:
            return "\n".join(out.lines)
        text = "\n".join(out.stderr)
        if any(m in text for m in LOCK_MESSAGES) and time.monotonic() < deadline:
            logger.info("another DVC process took DVC's lock as `dvc %s` started; waiting again", " ".join(args))
            continue
        if any(m in text for m in LOCK_MESSAGES):
            dvc_lock.wait_until_free(root, 0.0, logger.info)  # names the holder, if it still holds the lock
        raise DvcCommandFailed(args, failure_cause(list(out.stderr), status), "\n".join(out.lines))


def repro_stage(stage: str, root: Path, env: Mapping[str, str], logger: Logger, waiting: Waiting) -> str:
    """Bring one stage up to date (a no-op when DVC finds nothing changed), progress bars drawn as on a terminal."""
    return run_dvc(["repro", "--single-item", stage], root, {**env, **progress_env(env)}, logger, waiting)


def experiment_run(
    name: str,
    overrides: Sequence[str],
    targets: Sequence[str],
    root: Path,
    env: Mapping[str, str],
    logger: Logger,
    waiting: Waiting,
) -> str:
    """``dvc exp run --temp`` of ``targets`` (and their upstream) with ``-S`` overrides, named ``name``."""
    args = ["exp", "run", "--temp", "--name", name]
    for override in overrides:
        args += ["-S", override]
    return run_dvc([*args, *targets], root, {**env, **progress_env(env)}, logger, waiting)


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
