"""The pipeline's models side by side: one row per model that ``evaluate.models`` or ``export.ship`` names, read
from the reports its stages wrote, and whether each report was made from the weights now in the model folder.

``dvc metrics show`` prints every metrics file the stage graph declares as one table whose columns are the union
of their keys (training losses, distillation rounds, export candidates): hundreds of columns. This view keeps
what a person compares models by (the evaluation's FID against its real-vs-real floor, KID, precision, recall,
coverage; the shipped TFLite sizes and their parity verdict) and checks the provenance the reports record:
an evaluation, export or registration names the weights digest it was made from (:mod:`imagegen.provenance`),
and the digest of the folder's weights is computed afresh from the files, so a retrained model whose reports
were not remade shows as such. It reads files only: no MLflow store, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegen.artifact import read_model_meta
from imagegen.config import Params
from imagegen.fileio import read_json_object
from imagegen.provenance import DIGEST_KEY, short, weights_digest

TFLITE_VARIANTS = ("float32", "float16", "int8")
REPORTS = ("evaluation", "export", "registration")


@dataclass(frozen=True)
class ModelRow:
    """What the reports say of one model, and the digest of the weights its folder holds now (None: no folder)."""

    name: str
    folder: Path
    family: str | None
    weights: str | None
    evaluation: dict[str, Any] | None
    export: dict[str, Any] | None
    registration: dict[str, Any] | None
    version: str | None

    def report(self, kind: str) -> dict[str, Any] | None:
        return getattr(self, kind)  # one of REPORTS: a field of the same name

    def made_from(self, kind: str) -> str | None:
        """``current`` when the report names the folder's weights, ``other weights`` when it names others, ``no
        digest`` when it names none, ``unchecked`` when there is no folder to compare with; None when there is no
        such report."""
        report = self.report(kind)
        if report is None:
            return None
        if self.weights is None:
            return "unchecked"
        if DIGEST_KEY not in report:
            return "no digest"
        return "current" if report[DIGEST_KEY] == self.weights else "other weights"

    @property
    def provenance(self) -> str:
        """One phrase: are the reports this row shows made from the weights in the folder?"""
        if self.weights is None:
            return f"{self.folder} absent (dvc pull or dvc repro)"
        present = [kind for kind in REPORTS if self.report(kind) is not None]
        if not present:
            return "no reports yet (dvc repro)"
        stale = [kind for kind in present if self.made_from(kind) != "current"]
        if not stale:
            return "yes"
        named = ", ".join(f"{kind} {self._named_weights(kind)}" for kind in stale)
        return f"no: {named} (weights {short(self.weights)})"

    @property
    def stale(self) -> list[str]:
        """The reports made from other weights than the folder holds (or naming none)."""
        return [kind for kind in REPORTS if self.made_from(kind) in ("other weights", "no digest")]

    def _named_weights(self, kind: str) -> str:
        digest = (self.report(kind) or {}).get(DIGEST_KEY)
        return short(digest) if isinstance(digest, str) else "names no weights"


def _digest_of_folder(folder: Path) -> tuple[str | None, str | None]:
    """(family, digest of the weight files) of a model folder, (None, None) when it holds no model.json."""
    if not (folder / "model.json").is_file():
        return None, None
    meta = read_model_meta(folder)
    return str(meta["family"]), weights_digest(folder, meta["weights"])


def model_rows(cfg: Params, root: Path | str = ".") -> list[ModelRow]:
    """One row per model of ``evaluate.models`` and then ``export.ship``, read from ``train.reports_dir`` as
    ``dvc.yaml``'s evaluate, export and register stages write it; relative paths are taken from ``root`` (the
    project folder)."""
    reports = Path(root) / cfg.train.reports_dir
    folders: dict[str, Path] = {**cfg.evaluate.models}
    for name, folder in cfg.export.ship.items():
        folders.setdefault(name, folder)
    rows = []
    for name, folder in folders.items():
        family, digest = _digest_of_folder(Path(root) / folder)
        evaluation = read_json_object(reports / f"evaluate_{name}" / "metrics.json", "metrics of `imagegen evaluate`")
        export = read_json_object(reports / f"export_{name}" / "metrics.json", "metrics of `imagegen export`")
        registration = read_json_object(reports / f"register_{name}.json", "record of `imagegen register`")
        run = read_json_object(reports / f"register_{name}.run.json", "run record of `imagegen register`")
        if family is None and export is not None and isinstance(export.get("family"), str):
            family = export["family"]
        version = str(run["version"]) if run and "version" in run else None
        rows.append(ModelRow(name, Path(folder), family, digest, evaluation, export, registration, version))
    return rows


def _number(report: dict[str, Any] | None, *keys: str, digits: int = 3) -> str:
    value: Any = report
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _tflite_sizes(export: dict[str, Any] | None) -> str:
    """``float32/float16/int8`` sizes in KiB of the shipped TFLite files."""
    artifacts = (export or {}).get("artifacts") or {}
    sizes = [artifacts.get(v, {}).get("bytes") for v in TFLITE_VARIANTS]
    if not any(isinstance(s, int) for s in sizes):
        return "-"
    return "/".join(f"{s / 1024:.0f}" if isinstance(s, int) else "-" for s in sizes)


def _parity(export: dict[str, Any] | None) -> str:
    artifacts = (export or {}).get("artifacts") or {}
    if not artifacts:
        return "-"
    failed = sorted(k for k, v in artifacts.items() if not (isinstance(v, dict) and v.get("passed") is True))
    return "passed" if not failed else f"failed: {', '.join(failed)}"


def _registered(row: ModelRow) -> str:
    if row.registration is None:
        return "-"
    alias = row.registration.get("alias", "?")
    return f"v{row.version} {alias}" if row.version else str(alias)


COLUMNS: tuple[str, ...] = (
    "model",
    "family",
    "FID",
    "floor FID",
    "KID",
    "precision",
    "recall",
    "coverage",
    "TFLite KiB f32/f16/int8",
    "parity",
    "registered",
    "from these weights",
)


def table_cells(row: ModelRow) -> list[str]:
    """The row as text, in :data:`COLUMNS` order."""
    ev = row.evaluation
    return [
        row.name,
        row.family or "-",
        _number(ev, "fid"),
        _number(ev, "floor", "fid"),
        _number(ev, "kid_mean", digits=4),
        _number(ev, "precision"),
        _number(ev, "recall"),
        _number(ev, "coverage"),
        _tflite_sizes(row.export),
        _parity(row.export),
        _registered(row),
        row.provenance,
    ]


def as_markdown(rows: Iterable[ModelRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def as_records(rows: Iterable[ModelRow]) -> list[dict[str, Any]]:
    """Machine-readable rows: the reports as written, and each one's provenance verdict."""
    return [
        {
            "name": row.name,
            "folder": str(row.folder),
            "family": row.family,
            DIGEST_KEY: row.weights,
            "evaluation": row.evaluation,
            "export": row.export,
            "registration": row.registration,
            "registered_version": row.version,
            "made_from": {kind: row.made_from(kind) for kind in REPORTS},
        }
        for row in rows
    ]
