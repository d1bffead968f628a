"""Opt-in phase timings of one ``imagegen`` process, for ``bench/pipeline_profile.py``.

With ``IMAGEGEN_PROFILE=<path>`` in the environment the CLI calls :func:`activate_from_env`; the code marks
its costly parts with ``with phase("train.steps", "work"):`` and, when the process exits, ``<path>`` gets a JSON
record: the process start (epoch seconds), when the first phase opened (everything before it is interpreter
start, imports and params), when the process ended, and per phase its category and *exclusive* seconds (a
nested phase's time is not counted again in its parent). Without the variable :func:`phase` does nothing.

The profile lives in a :class:`contextvars.ContextVar`, so nothing here is module-level mutable state and a
thread that never activated one sees none.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "IMAGEGEN_PROFILE"
CATEGORIES = ("compile", "work", "io", "tracking")


def process_start_epoch() -> float | None:
    """When this process started (epoch seconds, 10 ms resolution), from ``/proc``; None where unavailable."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])  # /proc/stat's btime is whole seconds
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Profile:
    """Accumulated phases of one process; :meth:`write` puts them in ``path`` as JSON."""

    path: Path
    process_start: float | None
    stage: str | None = None  # $DVC_STAGE: the DVC stage that runs this process
    activated: float = field(default_factory=time.time)
    entered: float | None = None  # first phase opened: the end of start-up and imports
    phases: dict[str, dict[str, float | int | str]] = field(default_factory=dict)
    _open: list[float] = field(default_factory=list)  # per open phase: seconds its children took

    @contextmanager
    def phase(self, name: str, category: str) -> Iterator[None]:
        if category not in CATEGORIES:
            raise ValueError(f"profiling phase {name!r}: category {category!r} is not one of {CATEGORIES}")
        if self.entered is None:
            self.entered = time.time()
        self._open.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            children = self._open.pop()
            if self._open:
                self._open[-1] += elapsed
            row = self.phases.setdefault(name, {"category": category, "seconds": 0.0, "count": 0})
            row["seconds"] = float(row["seconds"]) + elapsed - children
            row["count"] = int(row["count"]) + 1

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "stage": self.stage,
            "argv": sys.argv,
            "process_start": self.process_start,
            "activated": self.activated,
            "entered": self.entered,
            "ended": time.time(),
            "phases": self.phases,
        }

    def write(self) -> None:
        """Write the record (a temporary sibling renamed, so a reader never sees half a file)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        os.replace(tmp, self.path)


_current: ContextVar[Profile | None] = ContextVar("imagegen_profile", default=None)


def activate_from_env(environ: Mapping[str, str] | None = None, *, write_at_exit: bool = True) -> Profile | None:
    """Start profiling this process when ``IMAGEGEN_PROFILE`` is set (written at exit); else None.

    A file path gets this process's record; an existing folder (or a path ending in ``/``) gets one file per
    process, ``<DVC stage>.<pid>.json``, so a whole ``dvc repro`` can be profiled with one variable.
    """
    env = os.environ if environ is None else environ
    target = env.get(ENV_VAR)
    if not target:
        return None
    current = _current.get()
    if current is not None:
        return current
    stage = env.get("DVC_STAGE") or None
    path = Path(target)
    if target.endswith(("/", os.sep)) or path.is_dir():
        path = path / f"{stage or 'imagegen'}.{os.getpid()}.json"
    profile = Profile(path, process_start_epoch(), stage)
    _current.set(profile)
    if write_at_exit:
        atexit.register(profile.write)
    return profile


@contextmanager
def phase(name: str, category: str = "work") -> Iterator[None]:
    """Time the block as ``name`` (category: compile, work, io or tracking) when profiling is on."""
    profile = _current.get()
    if profile is None:
        yield
        return
    with profile.phase(name, category):
        yield
