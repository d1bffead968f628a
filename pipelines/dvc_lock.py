"""Who holds DVC's locks in a project folder, and waiting until nobody does.

DVC guards a project with two locks under ``.dvc/tmp``: ``lock``, held by a DVC command while it reads and
writes ``dvc.lock`` and the cache (the holder's pid is written in it), and ``rwlock``, a JSON record of the
paths a running stage reads and writes, with the pid and command line of the process (``dvc repro``) that
runs it. A second DVC command that meets either gives up after a few seconds with ``Unable to acquire lock``
or ``... is busy, it is being blocked by``. The flow therefore waits until both are free, saying who holds
them, before each DVC command it runs; a holder whose process is gone does not count (DVC itself clears such
entries).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagegen.errors import ImagegenError

POLL_S = 2.0
REMIND_S = 60.0
CMD_CHARS = 160


@dataclass(frozen=True)
class Holder:
    """A live process holding one of DVC's locks: its pid and what it runs (``dvc repro train_vae``)."""

    pid: int
    cmd: str

    def __str__(self) -> str:
        cmd = " ".join(self.cmd.split())  # one line, whatever the command line holds
        return f"PID {self.pid} (`{cmd if len(cmd) <= CMD_CHARS else cmd[: CMD_CHARS - 3] + '...'}`)"


class DvcLockHeld(ImagegenError):
    """Another process still held DVC's lock when the flow's wait ran out."""


def _command_of(pid: int) -> str:
    """A process's command line, shortened to ``dvc <args>`` when it is a DVC command."""
    import psutil

    try:
        parts = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return "unknown command"
    for i, part in enumerate(parts):
        if Path(part).name == "dvc" or (part == "dvc" and i > 0 and parts[i - 1] == "-m"):
            return " ".join(["dvc", *parts[i + 1 :]])
    return " ".join(parts) or "unknown command"


def _alive(pid: int) -> bool:
    import psutil

    return pid != os.getpid() and psutil.pid_exists(pid)


def repo_lock_holder(root: Path) -> Holder | None:
    """The process holding ``.dvc/tmp/lock`` (an ``flock``, as DVC takes it), or None when it is free."""
    path = Path(root) / ".dvc" / "tmp" / "lock"
    if not path.is_file():
        return None
    with open(path, "a+") as fp:
        try:
            fcntl.flock(fp.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fp.seek(0)
            text = fp.read().strip()
            pid = int(text) if text.isdigit() else 0
            return Holder(pid, _command_of(pid) if pid else "unknown command")
        fcntl.flock(fp.fileno(), fcntl.LOCK_UN)
    return None


def rwlock_holders(root: Path) -> list[Holder]:
    """The live processes named in ``.dvc/tmp/rwlock`` (a stage of theirs is running), each once."""
    path = Path(root) / ".dvc" / "tmp" / "rwlock"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being rewritten this instant
        return []
    infos: list[dict] = list((record.get("write") or {}).values())
    for readers in (record.get("read") or {}).values():
        infos.extend(readers)
    found: dict[int, Holder] = {}
    for info in infos:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            pid = int(info["pid"])
            if pid not in found and _alive(pid):
                found[pid] = Holder(pid, str(info.get("cmd") or _command_of(pid)))
    return list(found.values())


def holders(root: Path) -> list[Holder]:
    """Every live process holding one of DVC's locks in ``root`` (empty: a DVC command can start now)."""
    found = rwlock_holders(root)
    repo = repo_lock_holder(root)
    if repo is not None and all(h.pid != repo.pid for h in found) and (repo.pid == 0 or _alive(repo.pid)):
        found.insert(0, repo)
    return found


def describe(found: list[Holder]) -> str:
    return ", ".join(str(h) for h in found)


def wait_until_free(root: Path, timeout_s: float, log: Callable[[str], None]) -> None:
    """Return once no other process holds DVC's locks in ``root``; log who holds them while waiting.

    Raises :class:`DvcLockHeld`, naming the holder, when they are still held after ``timeout_s`` seconds.
    """
    root = Path(root)
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    reported: list[Holder] = []
    reminded = started
    while found := holders(root):
        now = time.monotonic()
        if now >= deadline:
            raise DvcLockHeld(
                f"DVC's lock in {root} is held by {describe(found)}; waited {now - started:.0f} s "
                f"(pipeline.lock_timeout_s {timeout_s:g}): let it finish, or stop it, then run again"
            )
        if found != reported:
            log(f"waiting for DVC's lock in {root}: held by {describe(found)} (up to {timeout_s:g} s)")
            reported, reminded = found, now
        elif now - reminded >= REMIND_S:
            log(f"still waiting for DVC's lock ({now - started:.0f} s): held by {describe(found)}")
            reminded = now
        time.sleep(min(POLL_S, max(0.0, deadline - now)))
    if reported:
        log(f"DVC's lock is free after {time.monotonic() - started:.0f} s")
