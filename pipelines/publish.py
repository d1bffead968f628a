"""A successful pipeline run, published the DVC way: a named DVC experiment pushed to the team's git remote,
its outputs pushed to the DVC remote; and the way back for a teammate, without retraining.

After a plain run (``dvc repro`` of the workspace) the flow saves the workspace as experiment
``nightly-<date>-<flow run id>`` (``dvc exp save``: a commit under ``refs/exps`` holding ``dvc.lock``,
``params.yaml`` and the reports); a run with overrides already is experiment ``prefect-<flow run id>``.
``dvc exp push <git remote> <name>`` sends the experiment's commit to the git remote and its outputs to the DVC
remote. The worker's folder then goes back to ``HEAD`` for the files git tracks (``dvc.lock``, the reports):
the experiment holds them, ``dvc exp apply <name>`` brings them back, and a ``git pull`` there meets no local
changes. Its DVC outputs stay in the cache, so the next run restores unchanged stages from DVC's run cache.

Nothing is published unless ``pipeline.publish.git_remote`` (params.yaml) or the flow's ``publish`` parameter
names a git remote: a local run stays local.

For a teammate (``python -m pipelines.publish get <name>`` does the last three)::

    dvc exp list origin                       # the published runs
    dvc remote modify --local local url "$(realpath ../imagegen-dvc-remote)"   # see pin_remote
    dvc exp pull origin nightly-20250101-1a2b3c4d   # its commit and its outputs from the DVC remote
    dvc exp apply nightly-20250101-1a2b3c4d   # dvc.lock, params, reports and models in the workspace

``python -m pipelines.publish pull`` is ``dvc pull`` after checking that a folder remote exists, so a clone on
another machine gets one line saying what to configure instead of DVC's error.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from imagegen.config import PublishConfig
from imagegen.errors import ImagegenError
from pipelines import dvc_runs


@dataclass(frozen=True)
class Published:
    """What a run published: the experiment, its commit, where its commit and outputs went, and the files of
    the worker's folder put back to ``HEAD``."""

    experiment: str
    commit: str
    git_remote: str
    git_url: str
    dvc_remote: str
    dvc_url: str
    restored: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "restored": list(self.restored)}


def not_configured(cfg: PublishConfig) -> str | None:
    """Why nothing is published (None when a git remote is set): the one log line that says what to set."""
    if cfg.git_remote:
        return None
    also = f" (publish.dvc_remote {cfg.dvc_remote!r} alone is not enough)" if cfg.dvc_remote else ""
    return (
        "not published" + also + ": set pipeline.publish.git_remote in params.yaml, or the flow's `publish` "
        "parameter, to a git remote (e.g. origin) to push each run as a DVC experiment with its outputs"
    )


def experiment_name(flow_run_id: str, when: datetime) -> str:
    """``nightly-<YYYYMMDD>-<first 8 characters of the flow run id>``: sortable by date, unique per run."""
    return f"nightly-{when:%Y%m%d}-{flow_run_id[:8]}"


def _git(args: Sequence[str], root: Path, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise ImagegenError(f"`git {' '.join(args)}` in {root} failed: {detail}")
    return proc.stdout


def git_remote_url(root: Path, remote: str) -> str:
    """The URL of git remote ``remote`` (a name in this clone, or itself a URL or path)."""
    proc = subprocess.run(["git", "remote", "get-url", remote], cwd=root, capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout.strip()
    if "://" in remote or remote.startswith(("/", "git@")) or Path(root, remote).exists():
        return remote
    names = _git(["remote"], root, check=False).split()
    raise ImagegenError(
        f"publish.git_remote {remote!r} is not a git remote of {root} (it has {names or 'none'}): "
        f"`git remote add {remote} <url>`, or set publish.git_remote to one of them"
    )


def dvc_remote_url(root: Path, remote: str | None) -> tuple[str, str]:
    """The DVC remote ``remote`` (None: the project's default) as (name, URL), relative paths resolved as DVC
    resolves them (from the config file that names them)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        config = repo.config
        name = remote or config["core"].get("remote")
        remotes = config.get("remote", {})
    if not name:
        raise ImagegenError(f"{root}: no default DVC remote: `dvc remote add -d <name> <url>` (README: DVC remote)")
    if name not in remotes:
        raise ImagegenError(f"DVC remote {name!r} is not configured in {root} (it has {sorted(remotes) or 'none'})")
    return name, str(remotes[name]["url"])


def check_target(root: Path, cfg: PublishConfig) -> None:
    """Fail before any stage runs when the configured git or DVC remote is not there to push to."""
    if cfg.git_remote:
        git_remote_url(root, cfg.git_remote)
        dvc_remote_url(root, cfg.dvc_remote)


def local_folder(url: str) -> Path | None:
    """The folder of a DVC remote URL that is a local path (``/mnt/team/dvc``, ``file://...``); None for object
    storage, SSH and the like."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(url) if parsed.scheme == "" else None


def check_remote_exists(root: Path, remote: str | None = None) -> tuple[str, str]:
    """The DVC remote (name, URL), after checking that a folder remote exists: a clone on another machine has
    no ``../imagegen-dvc-remote``, and DVC's own error does not say what to configure."""
    name, url = dvc_remote_url(root, remote)
    folder = local_folder(url)
    if folder is not None and not folder.is_dir():
        raise ImagegenError(
            f"DVC remote '{name}' is {folder}, which does not exist: point it at the team's remote with "
            f"`dvc remote modify --local {name} url <path>`"
        )
    return name, url


def pin_remote(root: Path, remote: str | None = None) -> tuple[str, str] | None:
    """Give a DVC remote that ``.dvc/config`` names by a relative path (the default ``../imagegen-dvc-remote``)
    its absolute path in this clone's ``.dvc/config.local``: the same folder, but DVC's experiment commands
    (``dvc exp push``/``pull``) read ``.dvc/config`` from the experiment's commit and resolve a relative path
    there from the filesystem root, so the outputs would go to (or be looked for in) ``/imagegen-dvc-remote``.

    Returns (name, absolute path) when it pinned one; None when there was nothing to pin (a URL, an absolute
    path, or a ``--local`` setting already there).
    """
    from configobj import ConfigObj

    name, url = dvc_remote_url(root, remote)
    section = f'remote "{name}"'
    local = ConfigObj(str(Path(root) / ".dvc" / "config.local"))
    if local.get(section, {}).get("url"):
        return None
    raw = ConfigObj(str(Path(root) / ".dvc" / "config")).get(section, {}).get("url", "")
    if not raw or local_folder(raw) is None or Path(raw).is_absolute() or raw.startswith("file:"):
        return None
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "modify", "--local", name, "url", url],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise ImagegenError(f"`dvc remote modify --local {name} url {url}` in {root} failed: {detail}")
    return name, url


def uncached_outputs(root: Path, stages: Sequence[str]) -> list[str]:
    """The outputs of ``stages`` that git keeps, not DVC's cache (``cache: false``: metrics, plots, reports),
    relative to ``root``."""
    from dvc.repo import Repo

    wanted = set(stages)
    with Repo(str(root)) as repo:
        return sorted(
            {
                Path(out.fs_path).resolve().relative_to(Path(root).resolve()).as_posix()
                for stage in repo.index.stages
                if stage.addressing in wanted
                for out in stage.outs
                if not out.use_cache
            }
        )


def _untracked(root: Path, paths: Sequence[str]) -> list[str]:
    """Files under ``paths`` that git does not track and does not ignore."""
    if not paths:
        return []
    return _git(["ls-files", "--others", "--exclude-standard", "-z", "--", *paths], root).split("\0")[:-1]


def save_experiment(
    name: str,
    stages: Sequence[str],
    message: str,
    root: Path,
    logger: dvc_runs.Logger,
    waiting: dvc_runs.Waiting,
) -> str:
    """The workspace as DVC experiment ``name`` (``dvc exp save``), limited to ``stages`` (the others may have
    outputs this folder never built); new report files are included. Returns the experiment's git ref."""
    include = _untracked(root, ["dvc.lock", *uncached_outputs(root, stages)])
    args = ["exp", "save", "--name", name, "--message", message]
    for path in include:
        args += ["--include-untracked", path]
    dvc_runs.run_dvc([*args, *stages], root, dvc_runs.stage_env({}), logger, waiting)
    return dvc_runs.experiment_ref(name, root)


def push_experiment(
    name: str, cfg: PublishConfig, root: Path, logger: dvc_runs.Logger, waiting: dvc_runs.Waiting
) -> None:
    """``dvc exp push``: the experiment's commit to the git remote, its outputs to the DVC remote."""
    assert cfg.git_remote
    args = ["exp", "push", cfg.git_remote, name]
    if cfg.dvc_remote:
        args += ["--remote", cfg.dvc_remote]
    try:
        dvc_runs.run_dvc(args, root, dvc_runs.stage_env({}), logger, waiting)
    except dvc_runs.DvcCommandFailed as exc:
        raise ImagegenError(
            f"experiment {name} is saved in {root} but was not pushed ({exc.cause}): "
            f"`dvc exp push {' '.join(args[2:])}` there once the remote answers"
        ) from None


def restore_to_head(root: Path, commit: str, paths: Sequence[str]) -> list[str]:
    """Put ``paths`` of the worker's folder back to ``HEAD``, now that experiment ``commit`` holds them: files
    git tracks are checked out from ``HEAD``; new files are removed only when the experiment has them."""
    head = set(_git(["ls-tree", "-r", "-z", "--name-only", "HEAD", "--", *paths], root).split("\0")[:-1])
    changed = set(_git(["diff", "--name-only", "-z", "HEAD", "--", *paths], root).split("\0")[:-1])
    back = sorted(changed & head)
    if back:
        _git(["checkout", "HEAD", "--", *back], root)
    removed = []
    for path in _untracked(root, paths):
        if subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=root).returncode == 0:
            (Path(root) / path).unlink()
            removed.append(path)
    return back + removed


def publish_run(
    name: str,
    ref: str | None,
    stages: Sequence[str],
    message: str,
    cfg: PublishConfig,
    root: Path,
    logger: dvc_runs.Logger,
    waiting: dvc_runs.Waiting,
) -> Published:
    """Publish one run: save it as experiment ``name`` unless it already is one (``ref``), push it, and give
    the worker's folder back its ``HEAD`` state for what the experiment now holds."""
    assert cfg.git_remote
    git_url = git_remote_url(root, cfg.git_remote)
    dvc_name, dvc_url = dvc_remote_url(root, cfg.dvc_remote)
    saved_here = ref is None
    if ref is None:
        ref = save_experiment(name, stages, message, root, logger, waiting)
    commit = _git(["rev-parse", ref], root).strip()
    restored: list[str] = []
    if saved_here:
        restored = restore_to_head(root, commit, ["dvc.lock", *uncached_outputs(root, stages)])
    pinned = pin_remote(root, cfg.dvc_remote)
    if pinned is not None:
        logger.info("DVC remote '%s' pinned for this clone to %s (`dvc remote modify --local`)", *pinned)
    push_experiment(name, cfg, root, logger, waiting)
    return Published(name, commit, cfg.git_remote, git_url, dvc_name, dvc_url, tuple(restored))


def _dvc(args: Sequence[str], root: Path, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """A DVC command for a person: its output straight to the terminal (or captured), its status returned."""
    cmd = [sys.executable, "-m", "dvc", *args]
    return subprocess.run(cmd, cwd=root, env=dvc_runs.stage_env({}), capture_output=capture, text=True)


def get_experiment(root: Path, name: str, git_remote: str, remote: str) -> int:
    """``dvc exp pull`` + ``dvc exp apply``: a published run's files and outputs in this clone, no training.

    A run of some stages only (the flow's ``stages``) holds outputs for those alone, and ``dvc exp apply``
    fails on the others after applying the files; then the run's own stages are checked out and the others
    named as not part of it.
    """
    pulled = _dvc(["exp", "pull", "--remote", remote, git_remote, name], root)
    if pulled.returncode != 0:
        return pulled.returncode
    applied = _dvc(["exp", "apply", name], root, capture=True)
    if applied.returncode == 0:
        print(applied.stdout.strip())
        return 0
    saved = dvc_runs.read_text(root, "dvc.lock", dvc_runs.experiment_ref(name, root))
    if saved is None or saved != dvc_runs.read_text(root, "dvc.lock", None):  # not applied: DVC's own error
        print(applied.stdout + applied.stderr, end="", file=sys.stderr)
        return applied.returncode
    ran = list((yaml.safe_load(saved) or {}).get("stages", {}))
    print(f"experiment {name} ran {', '.join(ran)}: their outputs are checked out (it has no others)")
    return _dvc(["checkout", *ran], root).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """``pull``: ``dvc pull`` once the DVC remote is there; ``get NAME``: a published run's experiment and its
    outputs (``dvc exp pull`` + ``dvc exp apply``), no training."""
    ap = argparse.ArgumentParser(prog="python -m pipelines.publish", description=main.__doc__)
    ap.add_argument("--remote", "-r", default=None, help="DVC remote (default: the project's default remote)")
    commands = ap.add_subparsers(dest="command", required=True)
    pull = commands.add_parser("pull", help="dvc pull, after checking that the DVC remote exists")
    pull.add_argument("targets", nargs="*", help="stages or paths, as for dvc pull")
    get = commands.add_parser("get", help="a published run: dvc exp pull GIT_REMOTE NAME, then dvc exp apply NAME")
    get.add_argument("name", help="the experiment, e.g. nightly-20250101-1a2b3c4d (`dvc exp list origin`)")
    get.add_argument("--git-remote", default="origin", help="git remote it was pushed to (default: origin)")
    args = ap.parse_args(argv)
    root = Path.cwd()
    try:
        name, _ = check_remote_exists(root, args.remote)
        pinned = pin_remote(root, name) if args.command == "get" else None
    except ImagegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if pinned is not None:
        print(f"DVC remote '{pinned[0]}' pinned for this clone to {pinned[1]} (`dvc remote modify --local`)")
    if args.command == "pull":
        return _dvc(["pull", "--remote", name, *args.targets], root).returncode
    return get_experiment(root, args.name, args.git_remote, name)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
