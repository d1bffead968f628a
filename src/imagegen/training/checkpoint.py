"""Checkpoints: every network's weights, every optimiser's state, EMA weights and the loop's RNG/data state.

One HDF5 file per checkpoint (``ckpt-000200.h5``), written atomically, so an interrupted write never
replaces the last good one. Values are stored by position in ``model.weights`` / ``optimizer.variables``,
which is deterministic for a given architecture; a fingerprint of the architecture guards against
resuming into a different one. The loop's logged history (the loss curve up to the checkpoint's step) is
stored with it, so a resumed run's ``train_log.csv`` is whole.

A checkpoint that cannot be read (truncated, corrupt) is :class:`UnreadableCheckpoint`; the trainer then
falls back to the previous one. A checkpoint of another architecture is a plain :class:`TrainingError`:
falling back would not help.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from imagegen.errors import TrainingError
from imagegen.fileio import atomic_path, pause_for_tests
from imagegen.training.families.base import Family

_NAME = re.compile(r"^ckpt-(\d{6,})\.h5$")
# Spec keys that only say how long to train. Changing them is what ``--resume`` is for (train 600 steps, then
# ``--resume -S ddpm.steps=1500``), so the fingerprint leaves them out.
LENGTH_KEYS = frozenset({"steps"})


class UnreadableCheckpoint(TrainingError):
    """The checkpoint file is truncated or corrupt (not: written for another model)."""


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"ckpt-{step:06d}.h5"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def _without_length(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        k: {kk: vv for kk, vv in v.items() if kk not in LENGTH_KEYS} if isinstance(v, dict) else v
        for k, v in spec.items()
        if k not in LENGTH_KEYS
    }


def fingerprint(family: Family, *, with_length: bool = False) -> str:
    """Shapes of every weight and optimiser variable, plus the family spec less :data:`LENGTH_KEYS`: what must
    match to resume. ``with_length`` keeps them, as checkpoints of earlier releases did."""
    parts = {
        "spec": family.spec if with_length else _without_length(family.spec),
        "nets": {n: [list(w.shape) for w in m.weights] for n, m in sorted(family.networks.items())},
        "opts": {p.name: [list(v.shape) for v in p.optimizer.variables] for p in family.phases},
    }
    return json.dumps(parts, sort_keys=True)


def save_checkpoint(
    folder: Path,
    family: Family,
    step: int,
    state: dict[str, Any],
    keep: int,
    history: list[dict[str, float]] | None = None,
    stale: tuple[Path, ...] = (),
) -> Path:
    """Write ``ckpt-<step>.h5`` atomically; then remove ``stale`` (an earlier run's checkpoints) and all but
    the newest ``keep`` checkpoints."""
    dest = checkpoint_path(folder, step)
    with atomic_path(dest, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            _write(f, family, state, history or [])
        pause_for_tests("checkpoint")
    for old in stale:
        if old != dest:
            old.unlink(missing_ok=True)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return dest


def _write(f: h5py.File, family: Family, state: dict[str, Any], history: list[dict[str, float]]) -> None:
    f.attrs["state"] = json.dumps(state)
    f.attrs["fingerprint"] = fingerprint(family)
    # JSON bytes in a dataset: an HDF5 attribute is limited to 64 KiB, a long history is not.
    f.create_dataset("history", data=np.frombuffer(json.dumps(history).encode(), dtype=np.uint8))
    for name, net in family.networks.items():
        g = f.create_group(f"nets/{name}")
        for i, w in enumerate(net.weights):
            g.create_dataset(str(i), data=keras.ops.convert_to_numpy(w.value))
    for phase in family.phases:
        g = f.create_group(f"opts/{phase.name}")
        for i, v in enumerate(phase.optimizer.variables):
            g.create_dataset(str(i), data=keras.ops.convert_to_numpy(v.value))


def load_checkpoint(path: Path, family: Family) -> dict[str, Any]:
    """Restore weights and optimiser state into ``family`` (optimisers must be built); return loop state
    (with the logged ``history`` under that key, empty for checkpoints written before it was stored)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs["fingerprint"] not in (fingerprint(family), fingerprint(family, with_length=True)):
                raise TrainingError(
                    f"{path}: checkpoint was written for a different model or optimiser configuration; "
                    "start without --resume or restore the params it was trained with"
                )
            # Read everything before assigning anything: a corrupt file leaves the networks untouched.
            nets = {
                n: [np.asarray(f[f"nets/{n}/{i}"]) for i in range(len(m.weights))] for n, m in family.networks.items()
            }
            opts = {
                p.name: [np.asarray(f[f"opts/{p.name}/{i}"]) for i in range(len(p.optimizer.variables))]
                for p in family.phases
            }
            state = json.loads(f.attrs["state"])
            state["history"] = json.loads(bytes(np.asarray(f["history"]))) if "history" in f else []
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise UnreadableCheckpoint(f"{path}: unreadable checkpoint ({exc})") from None
    for name, net in family.networks.items():
        for w, value in zip(net.weights, nets[name], strict=True):
            w.assign(value)
    for phase in family.phases:
        for v, value in zip(phase.optimizer.variables, opts[phase.name], strict=True):
            v.assign(value)
    return state
