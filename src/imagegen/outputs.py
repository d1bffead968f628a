"""Where a command may write: an output never replaces what imagegen did not write.

Every output folder imagegen writes holds a marker file, ``.imagegen-output``, naming its kind (``dataset``,
``model``, ``export``, ``samples``, ``evaluation``, ...). ``--out`` may name:

* a missing path or an empty folder;
* a folder holding the marker of the same kind (an earlier output of the same command);
* a folder written by an earlier release, before markers, recognised by the files its kind always has.

Anything else — a user's folder with files in it, a regular file, an output of another kind, the working
folder or one of its parents, a folder that holds one of the command's inputs — is refused with one line
(exit 2) before any work starts, and nothing is touched. The marker's bytes depend only on the kind, so a
DVC-tracked output stays byte-reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from imagegen.errors import ImagegenError

MARKER = ".imagegen-output"


class OutputError(ImagegenError):
    """``--out`` names something imagegen may not replace."""


def _json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _has_keys(path: Path, *keys: str) -> bool:
    value = _json_object(path)
    return value is not None and all(k in value for k in keys)


# What each kind's folder always held before markers existed (outputs of earlier releases stay replaceable).
LEGACY_SIGNATURES: dict[str, Callable[[Path], bool]] = {
    "dataset": lambda d: _has_keys(d / "manifest.json", "content_hash"),
    "model": lambda d: _has_keys(d / "model.json", "family", "weights"),
    "students": lambda d: any(_has_keys(r / "model.json", "family", "distillation") for r in d.glob("round_*")),
    "features": lambda d: _has_keys(d / "model.json", "feature_dim"),
    "export": lambda d: (d / "savedmodel").is_dir() and _has_keys(d / "metrics.json", "artifacts"),
    "samples": lambda d: (d / "samples.npz").is_file() or (d / "grid.png").is_file(),
    "evaluation": lambda d: _has_keys(d / "metrics.json", "fid", "floor"),
    "report": lambda d: (d / "metrics.json").is_file() or (d / "report.md").is_file(),
}


def marker_text(kind: str) -> str:
    """The marker's content: the kind only, so two runs write the same bytes."""
    return json.dumps({"imagegen_output": kind}) + "\n"


def kind_of(folder: Path) -> str | None:
    """The kind named by ``folder``'s marker, or None (no marker, or not one of ours)."""
    marker = Path(folder) / MARKER
    if not marker.is_file() or marker.is_symlink():
        return None
    value = _json_object(marker)
    kind = value.get("imagegen_output") if value else None
    return kind if isinstance(kind, str) else None


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` (a folder being written, usually a temporary sibling) as an output of ``kind``."""
    (Path(folder) / MARKER).write_text(marker_text(kind))


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_output(dest: Path | str, kind: str, inputs: Iterable[Path | str | None] = (), option: str = "--out") -> Path:
    """Refuse (:class:`OutputError`) unless ``dest`` may be written as an output of ``kind``; return it.

    ``inputs`` are the command's inputs: an output that is one of them or holds one is refused, since replacing
    it would delete what the command reads.
    """
    dest = Path(dest)
    resolved = dest.resolve()
    cwd = Path.cwd().resolve()
    if _contains(resolved, cwd):
        where = "the working folder" if resolved == cwd else "a parent of the working folder"
        raise OutputError(f"{option} {dest}: is {where}; expected a folder of its own, e.g. {dest / kind}")
    for source in inputs:
        if source is None:
            continue
        source_resolved = Path(source).resolve()
        if _contains(resolved, source_resolved) or _contains(source_resolved, resolved):
            raise OutputError(
                f"{option} {dest}: holds or is inside the input {source}; write the output somewhere else"
            )
    if dest.is_symlink():
        raise OutputError(f"{option} {dest}: is a symbolic link; expected a folder path imagegen can replace")
    if not dest.exists():
        return dest
    if not dest.is_dir():
        raise OutputError(f"{option} {dest}: is a file; expected a new or empty folder, or an earlier {kind} output")
    found = kind_of(dest)
    if found == kind:
        return dest
    if found is not None:
        raise OutputError(
            f"{option} {dest}: holds an imagegen {found} output, not a {kind} output; choose another folder"
        )
    if not any(dest.iterdir()):
        return dest
    legacy = LEGACY_SIGNATURES.get(kind)
    if legacy is not None and legacy(dest):
        return dest
    raise OutputError(
        f"{option} {dest}: not empty and not written by imagegen (no {MARKER} marking it as imagegen's {kind} "
        "output); choose a new or empty folder, imagegen never replaces files it did not write"
    )


def check_output_file(dest: Path | str, is_ours: Callable[[Path], bool], what: str, option: str = "--out") -> Path:
    """Refuse a single-file output ``dest`` that exists and is not imagegen's (``is_ours`` says), or a folder."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        raise OutputError(f"{option} {dest}: is not a regular file; expected a path for the {what}")
    if dest.exists() and not is_ours(dest):
        raise OutputError(
            f"{option} {dest}: exists and is not a {what} written by imagegen; choose a new path, "
            "imagegen never replaces files it did not write"
        )
    return dest


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """An ``is_ours`` test for :func:`check_output_file`: a JSON object holding ``keys``."""
    return lambda path: _has_keys(path, *keys)
