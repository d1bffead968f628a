"""Check an MLflow store before a run uses it, so a bad store fails in seconds with one named line.

MLflow itself retries an unreachable server for minutes (7 retries, exponential backoff, 120 s
timeouts) and meets a corrupt or read-only SQLite file with a long SQLAlchemy traceback. Here:

* ``http(s)://``: one ``GET /health`` with a short timeout; and MLflow's own HTTP retries and
  timeouts are capped (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``..._TIMEOUT`` /
  ``..._BACKOFF_FACTOR``, unless the user set them) so a server dying mid-run cannot hang for
  minutes.
* ``sqlite:///``: the file (when it exists) must be an SQLite database with MLflow's tables, intact
  (``PRAGMA quick_check``) and writable, and its folder writable (SQLite writes a journal beside
  it). Its schema revision (``alembic_version``) must be one the installed MLflow knows: a store
  written by a newer MLflow is one line here, not MLflow's traceback. The revisions are read from
  MLflow's migration scripts without importing mlflow. A known but older revision is left to
  MLflow (another process may be creating the store right now, under MLflow's lock).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import re
import sqlite3
import stat
import urllib.error
import urllib.request
from pathlib import Path

from imagegen.errors import ImagegenError

SWITCH_OFF = "-S tracking.enabled=false"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_REVISION = re.compile(r"^revision\s*=\s*[\"']([0-9A-Za-z_]+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"[\"']([0-9A-Za-z_]+)[\"']")


class TrackingStoreError(ImagegenError):
    """The MLflow store named by the tracking URI cannot be used; the message names it."""


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (None for other schemes or an in-memory database)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def cap_http_retries(timeout_s: int, max_retries: int) -> None:
    """Bound MLflow's HTTP client (it reads these variables on every request); user settings win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def check_server(uri: str, timeout_s: float) -> None:
    """One ``GET <uri>/health``; any answer but 200 within ``timeout_s`` is a one-line error."""
    url = uri.rstrip("/") + "/health"
    try:
        # http(s) only: is_http() chose this path
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            if response.status == 200:
                return
            why = f"HTTP {response.status} from {url}"
    except urllib.error.HTTPError as exc:
        why = f"HTTP {exc.code} from {url}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        why = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    raise TrackingStoreError(
        f"MLflow tracking server {uri} is not reachable ({why}; waited at most {timeout_s:g} s): "
        f"start it, point tracking.uri / MLFLOW_TRACKING_URI at one that runs, "
        f"or switch tracking off with {SWITCH_OFF}"
    )


def _writable(path: Path) -> bool:
    """Write permission by the mode bits too: as root ``os.access`` says yes to a chmod-444 file."""
    mode = path.stat().st_mode
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@functools.cache
def mlflow_schema_revisions() -> tuple[frozenset[str], frozenset[str]] | None:
    """(every schema revision the installed MLflow knows, its head revisions), read from its alembic
    migration scripts without importing mlflow (seconds of imports); None when they cannot be found."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions"
    known: set[str] = set()
    parents: set[str] = set()
    for script in folder.glob("*.py"):
        text = script.read_text(encoding="utf-8", errors="replace")
        revision = _REVISION.search(text)
        if revision is None:
            continue
        known.add(revision.group(1))
        down = _DOWN_REVISION.search(text)
        if down is not None:
            parents.update(_QUOTED.findall(down.group(1)))
    if not known:
        return None
    return frozenset(known), frozenset(known - parents)


def mlflow_version() -> str:
    """The installed MLflow's version (from its metadata: mlflow is not imported)."""
    try:
        return importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def check_schema_revision(path: Path, revision: str | None) -> None:
    """A store at a schema revision the installed MLflow does not know (written by a newer MLflow)
    is one line naming the file; a known revision, older or current, is left to MLflow."""
    revisions = mlflow_schema_revisions()
    if revision is None or revisions is None:
        return
    known, heads = revisions
    if revision in known:
        return
    newest = ", ".join(sorted(heads))
    raise TrackingStoreError(
        f"MLflow store {path}: its schema revision {revision} is unknown to MLflow {mlflow_version()} "
        f"(newest known: {newest}): a newer MLflow wrote it, so upgrade mlflow (pip install -U mlflow); "
        f"if it is older, back it up and run `mlflow db upgrade sqlite:///{path}` "
        f"(or switch tracking off with {SWITCH_OFF})"
    )


def _schema_revision(db: sqlite3.Connection) -> str | None:
    """The store's alembic revision (None while a new store has no revision stamped yet)."""
    row = db.execute("SELECT version_num FROM alembic_version LIMIT 1").fetchone()
    return None if row is None else str(row[0])


def check_sqlite(path: Path) -> None:
    """The SQLite file of an MLflow store: absent (MLflow creates it), or an intact, writable
    store."""
    where = f"MLflow store {path}"
    hint = f"(tracking.uri / MLFLOW_TRACKING_URI; or switch tracking off with {SWITCH_OFF})"
    folder = path.parent
    if not folder.is_dir():
        raise TrackingStoreError(f"{where}: its folder {folder} does not exist {hint}")
    if not _writable(folder):
        raise TrackingStoreError(
            f"{where}: its folder {folder} is read-only; SQLite needs to write a journal beside the database {hint}"
        )
    if not path.exists():
        return
    if not path.is_file():
        raise TrackingStoreError(f"{where}: expected an SQLite database file, found a folder {hint}")
    if path.stat().st_size == 0:
        return  # an empty file is an empty database: MLflow creates its tables
    with path.open("rb") as fh:
        if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise TrackingStoreError(
                f"{where}: not an SQLite database (corrupt or another kind of file); "
                f"expected MLflow's SQLite store: restore it from a backup or move it away {hint}"
            )
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            verdict = db.execute("PRAGMA quick_check(1)").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            revision = _schema_revision(db) if "alembic_version" in tables and verdict == "ok" else None
        db.close()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return  # another process is writing to it: a live store, not a broken one
        raise TrackingStoreError(
            f"{where}: unreadable SQLite database ({exc}); expected MLflow's SQLite store: "
            f"restore it from a backup or move it away {hint}"
        ) from None
    except sqlite3.Error as exc:
        raise TrackingStoreError(
            f"{where}: unreadable SQLite database ({exc}); expected MLflow's SQLite store: "
            f"restore it from a backup or move it away {hint}"
        ) from None
    if verdict != "ok":
        raise TrackingStoreError(
            f"{where}: the SQLite database is damaged ({verdict}); restore it from a backup or move it away {hint}"
        )
    if tables and "alembic_version" not in tables:
        raise TrackingStoreError(
            f"{where}: an SQLite database without MLflow's tables "
            f"(has {', '.join(sorted(tables)[:5])}); "
            f"expected an MLflow store {hint}"
        )
    check_schema_revision(path, revision)
    if not _writable(path):
        raise TrackingStoreError(f"{where}: the file is read-only; MLflow must write to it {hint}")


def check_store(uri: str, *, timeout_s: float, http_timeout_s: int, http_retries: int) -> None:
    """Fail fast, with one line naming ``uri``, when the store behind it cannot be used."""
    if is_http(uri):
        cap_http_retries(http_timeout_s, http_retries)
        check_server(uri, timeout_s)
        return
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite(path)
