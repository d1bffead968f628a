"""Checkpoints: every network's weights, every optimiser's state, EMA weights and the loop's RNG/data state.

One HDF5 file per checkpoint (``ckpt-000200.h5``), written atomically, so an interrupted write never
replaces the last good one. Values are stored by position in ``model.weights`` / ``optimizer.variables``,
which is deterministic for a given architecture; a fingerprint of the architecture guards against
resuming into a different one.
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
from imagegen.fileio import atomic_path
from imagegen.training.families.base import Family

_NAME = re.compile(r"^ckpt-(\d{6,})\.h5$")


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


def fingerprint(family: Family) -> str:
    """Shapes of every weight and optimiser variable, plus the family spec: what must match to resume."""
    parts = {
        "spec": family.spec,
        "nets": {n: [list(w.shape) for w in m.weights] for n, m in sorted(family.networks.items())},
        "opts": {p.name: [list(v.shape) for v in p.optimizer.variables] for p in family.phases},
    }
    return json.dumps(parts, sort_keys=True)


def save_checkpoint(folder: Path, family: Family, step: int, state: dict[str, Any], keep: int) -> Path:
    dest = checkpoint_path(folder, step)
    with atomic_path(dest, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        f.attrs["state"] = json.dumps(state)
        f.attrs["fingerprint"] = fingerprint(family)
        for name, net in family.networks.items():
            g = f.create_group(f"nets/{name}")
            for i, w in enumerate(net.weights):
                g.create_dataset(str(i), data=keras.ops.convert_to_numpy(w.value))
        for phase in family.phases:
            g = f.create_group(f"opts/{phase.name}")
            for i, v in enumerate(phase.optimizer.variables):
                g.create_dataset(str(i), data=keras.ops.convert_to_numpy(v.value))
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return dest


def load_checkpoint(path: Path, family: Family) -> dict[str, Any]:
    """Restore weights and optimiser state into ``family`` (optimisers must be built); return loop state."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs["fingerprint"] != fingerprint(family):
                raise TrainingError(
                    f"{path}: checkpoint was written for a different model or optimiser configuration; "
                    "start without --resume or restore the params it was trained with"
                )
            for name, net in family.networks.items():
                g = f[f"nets/{name}"]
                for i, w in enumerate(net.weights):
                    w.assign(np.asarray(g[str(i)]))
            for phase in family.phases:
                g = f[f"opts/{phase.name}"]
                for i, v in enumerate(phase.optimizer.variables):
                    v.assign(np.asarray(g[str(i)]))
            return json.loads(f.attrs["state"])
    except (OSError, KeyError) as exc:
        raise TrainingError(f"{path}: unreadable checkpoint ({exc})") from None
