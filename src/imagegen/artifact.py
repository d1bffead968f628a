"""A trained model on disk: ``model.json`` (what to rebuild) plus one ``<network>.weights.h5`` per network.

``.weights.h5`` files load under any Keras backend, so a model trained with JAX on a GPU is sampled,
evaluated and exported with TensorFlow on a CPU. ``model.json`` is written last: its presence marks a
complete artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen.config import Params
from imagegen.errors import DataError
from imagegen.fileio import atomic_path, write_json
from imagegen.training.families import Family, build_family

FORMAT_VERSION = 1
MODEL_FILE = "model.json"


def save_model(family: Family, out_dir: Path, meta: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_FILE).unlink(missing_ok=True)  # incomplete until rewritten below
    files = {}
    for name, net in family.networks.items():
        dest = out_dir / f"{name}.weights.h5"
        with atomic_path(dest, suffix=".weights.h5") as tmp:
            net.save_weights(tmp)
        files[name] = dest.name
    record = {
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "spec": family.spec,
        "weights": files,
        "parameters": {n: int(net.count_params()) for n, net in family.networks.items()},
        **meta,
    }
    write_json(out_dir / MODEL_FILE, record)
    return out_dir


@dataclass
class LoadedModel:
    path: Path
    meta: dict[str, Any]
    family: Family

    @property
    def name(self) -> str:
        return self.family.name


def load_model(path: Path | str) -> LoadedModel:
    """Rebuild the networks from ``model.json`` and load their weights (float32, any backend)."""
    path = Path(path)
    meta_path = path / MODEL_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: no trained model here (expected the output folder of `imagegen train`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    spec = meta["spec"]
    name = meta["family"]
    params = Params.model_validate({name: spec[name]})
    family = build_family(name, params, tuple(spec["image_shape"]), spec["num_classes"])
    for net_name, filename in meta["weights"].items():
        weights = path / filename
        if not weights.is_file():
            raise DataError(f"{weights}: weights file listed in {meta_path} is missing")
        family.networks[net_name].load_weights(weights)
    return LoadedModel(path, meta, family)
