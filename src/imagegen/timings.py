"""Measured figures apart from determined ones.

A DVC-tracked report holds only what code, params and data determine, so that a re-run writes the same bytes
and DVC can skip what follows. Speeds and latencies differ run to run: they are split out of a report tree
here and written to an untracked ``run.json`` beside it (and logged to MLflow) instead, with what else
describes the run rather than its result: the MLflow run id, the checkpoint a run resumed from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

RUN_FILE = "run.json"  # untracked: measured figures and run facts
MEASURED_KEYS = frozenset({"images_per_sec", "ms_per_step", "latency_ms_per_image", "seconds", "wall_s"})


def split_measured(tree: Any, keys: Iterable[str] = MEASURED_KEYS) -> tuple[Any, Any]:
    """``(determined, measured)``: ``tree`` without the entries named in ``keys`` (at any depth), and those
    entries alone in the same nesting (None where a branch has none)."""
    keys = frozenset(keys)
    if not isinstance(tree, dict):
        return tree, None
    determined: dict[str, Any] = {}
    measured: dict[str, Any] = {}
    for key, value in tree.items():
        if key in keys:
            measured[key] = value
            continue
        kept, timed = split_measured(value, keys)
        determined[key] = kept
        if timed:
            measured[key] = timed
    return determined, measured or None
