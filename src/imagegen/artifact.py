"""A trained model on disk: ``model.json`` (what to rebuild) plus one ``<network>.weights.h5`` per network.

``model.json`` records ``weights_digest``, the content digest of the weights (:mod:`imagegen.provenance`),
computed when the folder is saved and checked when it is loaded: a folder whose weights were swapped or
edited since, or one written before digests existed, is refused. Weight entries are plain file names inside
the folder; a path (``../``, absolute, a link leaving the folder) is refused, so a model folder can never make
imagegen read another model's weights.

``.weights.h5`` files load under any Keras backend, so a model trained with JAX on a GPU is sampled,
evaluated and exported with TensorFlow on a CPU. The folder is written like a processed dataset or an
export: complete in a temporary sibling, then swapped into place (:func:`imagegen.fileio.atomic_dir`), so a
crash mid-save leaves the previous model whole. A model folder that cannot be read (``model.json`` not JSON,
a truncated weights file) is a :class:`~imagegen.errors.DataError` naming the file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagegen.config import Params, saved_without
from imagegen.errors import DataError
from imagegen.fileio import atomic_dir, write_json
from imagegen.profiling import phase
from imagegen.provenance import DIGEST_KEY, recorded_digest, weights_digest
from imagegen.training.families import build_family

if TYPE_CHECKING:
    from imagegen.training.families import Family
    from imagegen.training.families.spec import FamilySpec, Requirement

FORMAT_VERSION = 1
MODEL_FILE = "model.json"


@phase("model.save", "io")
def save_model(family: Family, out_dir: Path, meta: dict[str, Any], include: dict[str, Path] | None = None) -> Path:
    """Write the model folder ``out_dir`` whole (replacing any previous one only once complete).

    ``include`` maps names inside the folder to files or folders copied in with it (e.g. the sample grids
    written during training); anything else in a previous ``out_dir`` does not carry over.
    """
    out_dir = Path(out_dir)
    files = {name: f"{name}.weights.h5" for name in family.networks}
    record = {
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "spec": family.spec,
        "weights": files,
        "parameters": {n: int(net.count_params()) for n, net in family.networks.items()},
        **meta,
    }
    with atomic_dir(out_dir, kind="model", pause_point="save_model") as tmp:
        for name, net in family.networks.items():
            net.save_weights(tmp / files[name])
        record[DIGEST_KEY] = weights_digest(tmp, files)
        for name, source in (include or {}).items():
            source = Path(source)
            if source.is_dir():
                shutil.copytree(source, tmp / name)
            elif source.is_file():
                shutil.copy2(source, tmp / name)
        write_json(tmp / MODEL_FILE, record)
    return out_dir


def read_model_meta(path: Path | str) -> dict[str, Any]:
    """``model.json`` of the model folder ``path``, or a DataError naming the file and what was expected."""
    meta_path = Path(path) / MODEL_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: no trained model here (expected the output folder of `imagegen train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc}); expected the model.json of `imagegen train`") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{meta_path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
    missing = [k for k in ("family", "spec", "weights") if k not in meta]
    if missing:
        raise DataError(f"{meta_path}: missing {', '.join(missing)}; expected the model.json of `imagegen train`")
    check_weight_entries(meta["weights"], meta_path)
    recorded_digest(meta, meta_path, "imagegen train" if not meta.get("distillation") else "imagegen distill")
    return meta


def check_weight_entries(weights: Any, meta_path: Path) -> None:
    """``weights`` must map network names to plain ``.weights.h5`` file names inside the model folder."""
    if not isinstance(weights, dict) or not weights:
        raise DataError(
            f"{meta_path}: 'weights' must map network names to file names, got {type(weights).__name__} "
            f"{str(weights)[:60]}"
        )
    for network, filename in weights.items():
        plain = isinstance(filename, str) and filename == Path(filename).name and filename not in ("", ".", "..")
        if not plain or not filename.endswith(".weights.h5"):
            raise DataError(
                f"{meta_path}: weights of {network!r} is {filename!r}; expected a plain file name ending in "
                ".weights.h5 inside the model folder (no folders, no absolute paths)"
            )
        path = meta_path.parent / filename
        if path.is_symlink() and path.resolve().parent != meta_path.parent.resolve():
            raise DataError(f"{path}: a link leaving the model folder; weights must be files inside {meta_path.parent}")


def model_digest(path: Path | str) -> str:
    """The weights digest a model folder records (refused with one line when it records none)."""
    return str(read_model_meta(path)[DIGEST_KEY])


@dataclass
class LoadedModel:
    path: Path
    meta: dict[str, Any]
    family: Family

    @property
    def name(self) -> str:
        return self.family.name


@phase("model.load", "io")
def load_model(path: Path | str) -> LoadedModel:
    """Rebuild the networks from ``model.json`` and load their weights (float32, any backend)."""
    path = Path(path)
    meta = read_model_meta(path)
    meta_path = path / MODEL_FILE
    try:
        spec = meta["spec"]
        name = meta["family"]
        # the family's own section, plus any other params section it records (an LDM: its VAE's)
        sections = {
            k: saved_without(Params.model_fields[k].annotation, v) if isinstance(v, dict) else v
            for k, v in spec.items()
            if k in Params.model_fields
        }
        params = Params.model_validate({**sections, name: sections.get(name, spec[name])})
        family = build_family(name, params, tuple(spec["image_shape"]), spec["num_classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{meta_path}: 'spec' does not describe a model ({type(exc).__name__}: {exc})") from None
    for filename in meta["weights"].values():
        weights = path / filename
        if not weights.is_file():
            raise DataError(f"{weights}: weights file listed in {meta_path} is missing")
    actual = weights_digest(path, meta["weights"])
    if actual != meta[DIGEST_KEY]:
        raise DataError(
            f"{path}: the weights are not the ones {meta_path} records ({DIGEST_KEY} {meta[DIGEST_KEY][:19]}, "
            f"files hash to {actual[:19]}); they were changed after `imagegen train` wrote them: train again"
        )
    for net_name, filename in meta["weights"].items():
        weights = path / filename
        if net_name not in family.networks:
            raise DataError(f"{meta_path}: weights for unknown network {net_name!r}")
        try:
            family.networks[net_name].load_weights(weights)
        except Exception as exc:  # h5py/keras raise OSError, ValueError, KeyError... for a damaged file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"{weights}: unreadable weights ({reason}); expected the complete .weights.h5 of `imagegen train`"
            ) from None
    return LoadedModel(path, meta, family)


def load_requirements(spec: FamilySpec, section: Any, image_shape: tuple[int, ...]) -> dict[str, Family]:
    """The trained models family ``spec`` is built from (``spec.requires``), loaded from the folders its params
    ``section`` names, by requirement key: what :func:`~imagegen.training.families.build_family` takes as
    ``trained``. A missing folder, a model of another family or of other images is a one-line DataError saying
    how to make the right one. So is one whose ``model.json`` records a collapse found by training's checks
    (:mod:`imagegen.training.collapse`): a family built on it would learn from black, flat or uninformative
    outputs, so it is refused before any training."""
    trained: dict[str, Family] = {}
    for req in spec.requires:
        path = Path(getattr(section, req.key))
        where = f"{spec.name}.{req.key}={path}"
        if not (path / MODEL_FILE).is_file():
            raise DataError(
                f"{where}: no trained {req.label} there (no {MODEL_FILE}); run `imagegen train {req.family}` first"
            )
        check_not_collapsed(read_model_meta(path), where, req)
        loaded = load_model(path)
        if loaded.name != req.family:
            raise DataError(f"{where}: a {loaded.name} model, expected a {req.label} (`imagegen train {req.family}`)")
        shape = tuple(int(s) for s in loaded.family.spec["image_shape"])
        if shape != tuple(image_shape):
            raise DataError(f"{where}: trained on images {shape}, but this dataset's are {tuple(image_shape)}")
        trained[req.key] = loaded.family
    return trained


def check_not_collapsed(meta: dict[str, Any], where: str, req: Requirement) -> None:
    """Refuse (one-line DataError) a required model whose ``model.json`` records a collapse warning, naming what
    training found and how to get a usable one."""
    collapse = meta.get("collapse")
    if meta.get("family") != req.family or not isinstance(collapse, dict) or not collapse.get("warning"):
        return  # a model of another family is refused as such by the caller
    found = "; ".join(" ".join(str(p).split()) for p in collapse.get("problems") or []) or "a collapse warning"
    raise DataError(
        f"{where}: {MODEL_FILE} records a collapsed {req.label} ({found}); retrain it (`imagegen train "
        f"{req.family}`, see its train_{req.family}/metrics.json and sample grids) until training reports no "
        f"collapse, or point {where.split('=')[0]} at a healthy {req.label}"
    )
