"""Finding, downloading and verifying raw dataset files.

A raw file resolves in this order (DESIGN.md): the ``data.path`` folder from params, ``$IMAGEGEN_DATA_DIR/<name>/``,
the user cache (``$IMAGEGEN_CACHE_DIR`` or ``~/.cache/imagegen/<name>/``), then the official URL (downloaded into
the cache with a progress bar). Every file is checked against its published md5 before anything reads it.
"""

from __future__ import annotations

import os
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from imagegen.errors import ChecksumError, ConfigError, DataError, DataNotFoundError
from imagegen.fileio import atomic_path, md5_file

DATA_DIR_ENV = "IMAGEGEN_DATA_DIR"
CACHE_DIR_ENV = "IMAGEGEN_CACHE_DIR"


@dataclass(frozen=True)
class RawFile:
    """One published file of a dataset: its name, its md5 and where it is officially served."""

    filename: str
    md5: str
    url: str


def cache_root() -> Path:
    """The user cache folder (``$IMAGEGEN_CACHE_DIR``, else ``~/.cache/imagegen``), checked to be usable as one."""
    env = os.environ.get(CACHE_DIR_ENV)
    root = Path(env) if env else Path.home() / ".cache" / "imagegen"
    check_folder_path(root, f"{CACHE_DIR_ENV}={env}" if env else f"the cache folder {root} (moved by {CACHE_DIR_ENV})")
    return root


def check_folder_path(path: Path, named: str) -> None:
    """Refuse ``path`` when it, or the nearest part of it that exists, is not a folder.

    A file there would otherwise surface later as a bare NotADirectoryError, or as raw files "not found" in it.
    """
    existing = next((p for p in (path, *path.parents) if os.path.lexists(p)), None)
    if existing is None or existing.is_dir():
        return
    what = "a regular file" if existing.is_file() else "not a folder"
    problem = what if existing == path else f"inside {existing}, which is {what}"
    raise ConfigError(f"{named}: {problem}; expected a folder (or a path where one can be created)")


def candidate_dirs(dataset: str, explicit: Path | None) -> list[Path]:
    """Folders searched for raw files, in order."""
    dirs: list[Path] = []
    if explicit is not None:
        dirs.append(Path(explicit))
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs.append(Path(env) / dataset)
    dirs.append(cache_root() / dataset)
    return dirs


def verify_md5(path: Path, expected: str, dataset: str) -> str:
    actual = md5_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path}: md5 {actual} does not match the published {expected} for {dataset}; "
            "the file is corrupt, truncated or a different version. Delete it and provide the official file."
        )
    return actual


def resolve(
    dataset: str,
    files: tuple[RawFile, ...] | list[RawFile],
    explicit: Path | None = None,
    download: bool = True,
    mirror: str | None = None,
) -> dict[str, Path]:
    """Return ``{filename: verified local path}`` for every file, downloading what is missing if allowed."""
    dirs = candidate_dirs(dataset, explicit)
    resolved: dict[str, Path] = {}
    for raw in files:
        found = next((d / raw.filename for d in dirs if (d / raw.filename).is_file()), None)
        if found is None:
            found = _fetch(dataset, raw, dirs, download, mirror)
        verify_md5(found, raw.md5, dataset)
        resolved[raw.filename] = found
    return resolved


def _fetch(dataset: str, raw: RawFile, looked_in: list[Path], download: bool, mirror: str | None) -> Path:
    url = raw.url if mirror is None else mirror.rstrip("/") + "/" + raw.filename
    where = "\n".join(f"  - {d / raw.filename}" for d in looked_in)
    howto = (
        f"Provide it by copying the official file into one of those folders (e.g. set {DATA_DIR_ENV} to a folder "
        f"holding {dataset}/{raw.filename}, or set data.path), or allow the download (data.download=true) "
        "on a machine with network access."
    )
    if not download:
        raise DataNotFoundError(f"{raw.filename} for {dataset} not found; looked in:\n{where}\n{howto}")
    dest = cache_root() / dataset / raw.filename
    try:
        _download(url, dest, raw.md5, dataset)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
        raise DataNotFoundError(
            f"{raw.filename} for {dataset} not found; looked in:\n{where}\n"
            f"and downloading {url} failed ({exc}).\n{howto}"
        ) from None
    return dest


def _download(url: str, dest: Path, md5: str, dataset: str, timeout: float = 30.0) -> None:
    """Stream ``url`` to ``dest`` atomically with a progress bar.

    Bytes whose md5 is not ``md5`` never reach ``dest``.
    """
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
        total = int(response.headers.get("Content-Length") or 0) or None
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, transient=True) as progress, open(tmp, "wb") as out:
            task = progress.add_task(f"download {dest.name}", total=total)
            while block := response.read(1 << 16):
                out.write(block)
                progress.advance(task, len(block))
        actual = md5_file(tmp)
        if actual != md5:
            raise ChecksumError(
                f"{url}: downloaded md5 {actual} does not match the published {md5} for {dataset}; "
                f"not saved to {dest}. The server sent a truncated or different file; check data.mirror or retry."
            )


def check_tar_members(archive: tarfile.TarFile, archive_path: Path, dest: Path) -> None:
    """Refuse any member that would land outside ``dest`` or is not a plain file or folder."""
    root = dest.resolve()
    for member in archive.getmembers():
        name = member.name
        parts = PurePosixPath(name).parts
        target = (root / name).resolve()
        if PurePosixPath(name).is_absolute() or ".." in parts or not target.is_relative_to(root):
            raise DataError(f"{archive_path}: member {name!r} would be written outside {dest}; refusing to extract")
        if not (member.isfile() or member.isdir()):
            raise DataError(f"{archive_path}: member {name!r} is a link or special file; refusing to extract")


def safe_extract(archive_path: Path, dest: Path) -> Path:
    """Extract a (verified) tarball into ``dest`` after checking every member name."""
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            check_tar_members(archive, archive_path, dest)
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                archive.extractall(dest, filter="data")
            else:  # pragma: no cover - Python < 3.11.4
                archive.extractall(dest)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive_path}: not a readable tar archive ({exc})") from None
    return dest
