"""Atomic writes: a reader sees either the old artifact or the complete new one, never a half-written file.

Files are written to a temporary sibling and renamed into place (``os.replace`` is atomic on POSIX within
one filesystem). Folders are built in a temporary sibling and swapped in the same way.

Temporary siblings are named ``.<dest name>.<pid>@<host>.<random>.tmp[<suffix>]`` (and a folder being swapped
out ``.<dest name>.<pid>@<host>.old``), so a later run can tell whose they are: :func:`remove_stale_temps`
removes those whose owner process is gone (same host) or that are older than :data:`STALE_AFTER_S`, never a
live run's. A swapped-out folder left by a kill between the two renames of :func:`atomic_dir` is renamed back
when its destination is missing, so the previous output comes back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from imagegen.errors import DataError
from imagegen.outputs import check_output, write_marker


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_default(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give them the mode a plain open() would."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


STALE_AFTER_S = 24 * 3600.0  # a temporary of another host (or of unknown owner) is stale past this age
PAUSE_ENV = "IMAGEGEN_TEST_PAUSE"

# .NAME.PID@HOST.RANDOM.tmp[SUFFIX] | .NAME.PID@HOST.old | legacy .NAME.RANDOM.tmp[SUFFIX] / .NAME.old-PID
_OWNED = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]*)\.(?:[A-Za-z0-9_]+\.tmp(?:\..+)?|old)$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.(?:[A-Za-z0-9_]{8}\.tmp(?:\..+)?|old-(?P<pid>\d+))$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]


def _owner_tag() -> str:
    return f"{os.getpid()}@{_host()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_stale(path: Path, pid: int | None, host: str | None, max_age_s: float) -> bool:
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age > max_age_s:
        return True
    if pid is None or host != _host():
        return False  # unknown owner or another machine: only age tells
    return pid != os.getpid() and not _pid_alive(pid)


def remove_stale_temps(folder: Path | str, name: str | None = None, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove this project's temporary siblings in ``folder`` (only those for ``name`` if given) whose owner is
    gone or that are older than ``max_age_s``; returns what was removed (or restored, see the module docstring).

    Legacy names without an owner (from before owners were recorded) are removed only by age.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        owned, legacy = _OWNED.match(entry.name), _LEGACY.match(entry.name)
        match = owned or legacy
        if match is None or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"]) if match["pid"] else None
        host = match["host"] if owned else (_host() if pid is not None else None)
        if not _is_stale(entry, pid, host, max_age_s):
            continue
        dest = folder / match["name"]
        swapped_out = entry.name.endswith(".old") or (legacy is not None and legacy["pid"] is not None)
        if swapped_out and entry.is_dir() and not dest.exists():
            os.replace(entry, dest)  # killed between the two renames of atomic_dir: the previous output returns
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def pause_for_tests(point: str) -> None:
    """Test-only hook, inert unless ``$IMAGEGEN_TEST_PAUSE`` is ``POINT:SECONDS`` for this ``point``.

    The crash-safety tests set it to sleep inside a checkpoint write (``checkpoint``) or a model save
    (``save_model``), after the data is written to the temporary sibling and before it is renamed into
    place, so that a ``SIGKILL`` can land in that window.
    """
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    where, _, seconds = spec.partition(":")
    if where == point:
        time.sleep(float(seconds or 1.0))


@contextlib.contextmanager
def atomic_path(dest: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` (ending in ``.tmp<suffix>``); rename it to ``dest`` on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent, dest.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{_owner_tag()}.", suffix=".tmp" + suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _chmod_default(tmp_path, is_dir=False)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(dest: Path | str, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest: Path | str, text: str) -> Path:
    return write_bytes(dest, text.encode())


def read_json_object(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` (None when there is no such file), or one line naming the file when it is
    not the ``what`` it should be."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not JSON ({exc}); expected the {what}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, the {what}")
    return data


def write_json(dest: Path | str, obj: Any) -> Path:
    return write_text(dest, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy(dest: Path | str, array: np.ndarray) -> Path:
    with atomic_path(dest, suffix=".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)
    return Path(dest)


@contextlib.contextmanager
def atomic_dir(dest: Path | str, kind: str, pause_point: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``, marked as an output of ``kind``; on success it replaces ``dest``.

    ``dest`` must be replaceable by an output of ``kind`` (:func:`imagegen.outputs.check_output`: missing, empty,
    or an earlier output of that kind), checked again here even when the stage checked it before its work.
    Stale temporaries of earlier, killed runs for the same ``dest`` are removed first (see the module
    docstring). ``pause_point`` names the :func:`pause_for_tests` window before the swap.
    """
    dest = Path(dest)
    check_output(dest, kind)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent, dest.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{_owner_tag()}.", suffix=".tmp", dir=dest.parent))
    _chmod_default(tmp, is_dir=True)
    try:
        write_marker(tmp, kind)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if pause_point:
        pause_for_tests(pause_point)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.{_owner_tag()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def md5_file(path: Path | str, chunk: int = 1 << 20) -> str:
    return _file_digest(path, hashlib.md5(), chunk)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    return _file_digest(path, hashlib.sha256(), chunk)


def _file_digest(path: Path | str, digest: Any, chunk: int) -> str:
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
