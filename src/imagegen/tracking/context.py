"""What every run records about where it came from: git commit, ``dvc.lock``, and the orchestrator's
context.

The contract with an orchestrator (the Prefect flow), through the environment so that a stage run as
a subprocess (``dvc repro``, the CLI) inherits it unchanged:

* ``IMAGEGEN_MLFLOW_PARENT_RUN_ID``: every run started here becomes a child of this run (tag
  ``mlflow.parentRunId``) in the parent's experiment;
* ``IMAGEGEN_RUN_TAGS``: a JSON object whose items are set as tags on every run (e.g. the Prefect
  flow-run id, the DVC experiment name).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from imagegen.errors import ImagegenError

PARENT_RUN_ENV = "IMAGEGEN_MLFLOW_PARENT_RUN_ID"
RUN_TAGS_ENV = "IMAGEGEN_RUN_TAGS"


def parent_run_id_from_env() -> str | None:
    value = os.environ.get(PARENT_RUN_ENV, "").strip()
    return value or None


def run_tags_from_env() -> dict[str, str]:
    """``$IMAGEGEN_RUN_TAGS`` as tags; anything but a JSON object is a one-line error naming it."""
    text = os.environ.get(RUN_TAGS_ENV, "").strip()
    if not text:
        return {}
    try:
        tags = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImagegenError(f"${RUN_TAGS_ENV}: not JSON ({exc.msg}); expected a JSON object of tags") from None
    if not isinstance(tags, dict):
        raise ImagegenError(f"${RUN_TAGS_ENV}: expected a JSON object of tags, got {type(tags).__name__}")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()}


def _head(folder: Path | None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def git_commit(cwd: Path | None = None) -> str:
    """``HEAD``'s commit of the project around ``cwd``, else of the checkout imagegen runs from
    (a stage run from another folder), else ``unknown`` (an installed package outside git)."""
    return _head(cwd) or _head(Path(__file__).resolve().parent) or "unknown"


def dvc_lock_md5(cwd: Path | None = None) -> str | None:
    """md5 of ``dvc.lock`` in ``cwd``: which exact stage graph state the run belongs to."""
    lock = (Path.cwd() if cwd is None else cwd) / "dvc.lock"
    try:
        return hashlib.md5(lock.read_bytes()).hexdigest()
    except OSError:
        return None


def provenance_tags(cwd: Path | None = None) -> dict[str, str]:
    """``git.commit`` always, ``dvc.lock_md5`` when a dvc.lock is in ``cwd``."""
    tags = {"git.commit": git_commit(cwd)}
    md5 = dvc_lock_md5(cwd)
    if md5 is not None:
        tags["dvc.lock_md5"] = md5
    return tags
