"""The processed dataset format (version 1).

One folder per dataset version::

    manifest.json        source, raw-file checksums, shape, dtype, class names, counts, content hash
    train_images.npy     uint8 (N, H, W, C)
    train_labels.npy     int64 (N,)
    test_images.npy      uint8 (M, H, W, C)
    test_labels.npy      int64 (M,)

Plain ``.npy`` files, so they memory-map with numpy alone (no TensorFlow needed to read them). The
content hash covers the arrays and class names only, never timestamps or paths, so re-running ingestion
on the same inputs gives the same hash; MLflow runs record it as the dataset version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagegen.errors import DataError
from imagegen.fileio import atomic_dir, write_json

FORMAT_VERSION = 1
SPLITS = ("train", "test")
MANIFEST = "manifest.json"


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N,H,W,C), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images")


@dataclass
class Dataset:
    """A dataset in memory, as sources produce it and the processed folder stores it."""

    name: str
    splits: dict[str, Split]
    class_names: list[str]
    source: str
    files: list[dict[str, Any]] = field(default_factory=list)  # raw files with their md5s

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.splits["train"].images.shape[1:])  # type: ignore[return-value]


def content_hash(splits: dict[str, Split], class_names: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"imagegen-processed-v{FORMAT_VERSION}".encode())
    digest.update(json.dumps(class_names).encode())
    for name in sorted(splits):
        split = splits[name]
        images = np.ascontiguousarray(split.images)
        labels = np.ascontiguousarray(split.labels.astype(np.int64))
        digest.update(f"{name}:{images.shape}:{labels.shape}".encode())
        for array in (images, labels):
            if array.size:  # memoryview cannot cast a zero-size array (an empty split); it adds no bytes anyway
                digest.update(memoryview(array).cast("B"))
    return "sha256:" + digest.hexdigest()


def build_manifest(ds: Dataset, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    h, w, c = ds.image_shape
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "dataset": ds.name,
        "source": ds.source,
        "files": ds.files,
        "image_shape": [h, w, c],
        "dtype": "uint8",
        "value_range": [0, 255],
        "class_names": ds.class_names,
        "num_classes": len(ds.class_names),
        "counts": {name: int(s.images.shape[0]) for name, s in ds.splits.items()},
        "class_counts": {
            name: np.bincount(s.labels, minlength=len(ds.class_names)).astype(int).tolist()
            for name, s in ds.splits.items()
        },
        "content_hash": content_hash(ds.splits, ds.class_names),
    }
    if extra:
        manifest.update(extra)
    return manifest


def write_processed(ds: Dataset, out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``ds`` to ``out_dir`` atomically (the folder appears complete or not at all)."""
    for required in SPLITS:
        if required not in ds.splits:
            raise ValueError(f"dataset {ds.name!r} lacks the {required!r} split")
    manifest = build_manifest(ds, extra)
    with atomic_dir(out_dir) as tmp:
        for name, split in ds.splits.items():
            np.save(tmp / f"{name}_images.npy", np.ascontiguousarray(split.images), allow_pickle=False)
            np.save(tmp / f"{name}_labels.npy", split.labels.astype(np.int64), allow_pickle=False)
        write_json(tmp / MANIFEST, manifest)
    return manifest


@dataclass
class ProcessedDataset:
    """A processed dataset opened from disk; arrays are memory-mapped (read-only)."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: Path | str) -> ProcessedDataset:
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise DataError(
                f"{manifest_path}: no processed dataset here; run `imagegen ingest` (or `dvc repro ingest`) first"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest_path}: not valid JSON ({exc})") from None
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(
                f"{manifest_path}: format_version {version!r}, this imagegen reads {FORMAT_VERSION}; re-run ingest"
            )
        return cls(path=path, manifest=manifest)

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["image_shape"])  # type: ignore[return-value]

    def split(self, name: str, mmap: bool = True) -> Split:
        if name not in self.manifest["counts"]:
            raise DataError(f"{self.path}: no split {name!r} (has {sorted(self.manifest['counts'])})")
        mode = "r" if mmap else None
        img_path, lab_path = self.path / f"{name}_images.npy", self.path / f"{name}_labels.npy"
        try:
            images = np.load(img_path, mmap_mode=mode, allow_pickle=False)
            labels = np.load(lab_path, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{img_path.parent}: cannot read split {name!r} ({exc})") from None
        expected = (self.manifest["counts"][name], *self.image_shape)
        if images.shape != expected or images.dtype != np.uint8:
            raise DataError(f"{img_path}: expected uint8 {expected}, found {images.dtype} {images.shape}")
        return Split(images=images, labels=labels)
