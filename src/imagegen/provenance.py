"""Weights digests: what binds an evaluation, an export, a student and a registry version to the weights they
were made from.

A model folder's ``model.json`` carries ``weights_digest``, a content digest of its weights computed when the
folder is saved. Every artifact made from a model (an evaluation's ``metrics.json``, an export's
``metrics.json``, a distilled student's ``distilled_from``) records the digest of the model it measured, and
``imagegen register`` / ``promote`` refuse an evaluation or export whose digest is not the model's. So the
registry can only ship weights that were evaluated and exported, never an evaluation of other weights.

The digest is of the tensors, not of the ``.weights.h5`` container: each network's datasets are read with
h5py in name order and their names, dtypes, shapes and raw bytes hashed (SHA-256). Identical weights give the
same digest whatever HDF5 library wrote them, and reading it needs no Keras backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from imagegen.errors import DataError

DIGEST_KEY = "weights_digest"
ALGORITHM = "sha256"


def _hash_h5(path: Path, digest: Any) -> None:
    """Feed every dataset of the HDF5 file ``path`` (name, dtype, shape, bytes) to ``digest``, in name order."""
    import h5py

    names: list[str] = []
    try:
        with h5py.File(path, "r") as fh:
            fh.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            for name in sorted(names):
                array = np.ascontiguousarray(fh[name][()])
                digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
                digest.update(array.tobytes())
    except (OSError, KeyError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: unreadable weights ({reason}); expected the complete .weights.h5 of `imagegen train`"
        ) from None


def weights_digest(model_dir: Path | str, weights: Mapping[str, str]) -> str:
    """The digest of the networks ``{network: file name}`` in ``model_dir``, as ``sha256:<hex>``."""
    digest = hashlib.new(ALGORITHM)
    for network in sorted(weights):
        digest.update(f"network\0{network}\0".encode())
        _hash_h5(Path(model_dir) / weights[network], digest)
    return f"{ALGORITHM}:{digest.hexdigest()}"


def recorded_digest(meta: Mapping[str, Any], source: Path | str, rerun: str) -> str:
    """The ``weights_digest`` that ``meta`` (read from ``source``) records, or one line saying to run ``rerun``.

    Files written before digests existed have none: they cannot vouch for any weights, so they are refused
    rather than trusted.
    """
    value = meta.get(DIGEST_KEY)
    if not isinstance(value, str) or not value.startswith(f"{ALGORITHM}:"):
        found = "none" if value is None else repr(value)
        raise DataError(
            f"{source}: records no weights digest ({DIGEST_KEY}: {found}); it was made by an older imagegen "
            f"or by hand: re-run `{rerun}` to make one that names the weights it measured"
        )
    return value


def require_same_weights(model_digest: str, artifact_digest: str, artifact: Path | str, model_dir: Path | str) -> None:
    """Refuse an artifact (an evaluation, an export) made from other weights than the model's."""
    if artifact_digest != model_digest:
        raise DataError(
            f"{artifact}: made from weights {short(artifact_digest)}, but {model_dir} holds weights "
            f"{short(model_digest)}; evaluate and export this model again before registering it"
        )


def short(digest: str) -> str:
    """``sha256:0123456789ab``: enough of a digest for a message."""
    return digest[: len(ALGORITHM) + 13]
