"""The processed dataset format (version 1; version 2 = version 1 plus captions).

One folder per dataset version::

    manifest.json        source, raw-file checksums, shape, dtype, class names, counts, content hash
    train_images.npy     uint8 (N, H, W, C)
    train_labels.npy     int64 (N,)
    test_images.npy      uint8 (M, H, W, C)
    test_labels.npy      int64 (M,)

A dataset with captions (:mod:`imagegen.data.captions`) is written as version 2: the same files plus
``train_captions.npy`` / ``test_captions.npy`` (int32 token ids, (N, max_length)) and a ``captions`` entry in
the manifest (vocabulary, max_length, source); its content hash also covers the vocabulary and token ids. A
dataset without captions is written exactly as before (version 1, same bytes, same hash).

Plain ``.npy`` files, so they memory-map with numpy alone (no TensorFlow needed to read them). The
content hash covers the arrays and class names only, never timestamps or paths, so re-running ingestion
on the same inputs gives the same hash; MLflow runs record it as the dataset version.

Memory-bounded writing: a split may be a :class:`StreamedSplit` (labels in memory, images produced in
chunks); :func:`write_processed` streams every split's images to its ``.npy`` file chunk by chunk and
hashes them on the way, so peak memory is one chunk, not the dataset. The bytes written (files and hash)
are exactly those of the in-memory path, which is the same code fed one chunk per split.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from imagegen.data.captions import Captions
from imagegen.errors import DataError
from imagegen.fileio import atomic_dir, write_json

FORMAT_VERSION = 1
CAPTIONS_FORMAT_VERSION = 2  # written when the dataset has captions; both are read
READABLE_VERSIONS = (FORMAT_VERSION, CAPTIONS_FORMAT_VERSION)
SPLITS = ("train", "test")
MANIFEST = "manifest.json"
CHUNK_BYTES = 2 << 20  # image bytes per chunk when streaming a split: what ingest holds at a time


def chunk_rows(image_shape: tuple[int, ...]) -> int:
    """Images per streamed chunk: ``CHUNK_BYTES`` of uint8 images (at least one)."""
    return max(1, CHUNK_BYTES // max(1, int(np.prod(image_shape))))


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    captions: np.ndarray | None = None  # int32 token ids (N, max_length), datasets with captions only

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N,H,W,C), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images")
        if self.captions is not None and (self.captions.ndim != 2 or len(self.captions) != len(self.labels)):
            raise ValueError(f"captions shape {self.captions.shape} does not match {len(self.labels)} images")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        size = size or chunk_rows(self.image_shape)
        for start in range(0, self.images.shape[0], size):
            yield self.images[start : start + size]


ChunkFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class StreamedSplit:
    """A split whose images are produced in order, a chunk at a time, by ``read()`` (labels are in memory).

    ``read`` is called once per pass (writing is one pass) and may raise :class:`DataError` for a bad file.
    """

    labels: np.ndarray  # int64 (N,)
    image_shape: tuple[int, int, int]
    read: Callable[[], Iterator[np.ndarray]]  # yields uint8 (k, H, W, C) chunks totalling N images

    def chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        del size  # the producer chooses its chunk size
        return self.read()

    def map(self, fn: ChunkFn, image_shape: tuple[int, int, int]) -> StreamedSplit:
        """The same split with ``fn`` applied to each chunk (a per-image transform, e.g. a resize)."""
        source = self.read
        return StreamedSplit(self.labels, image_shape, lambda: (fn(chunk) for chunk in source()))

    @property
    def images(self) -> np.ndarray:
        """Every image in memory (small datasets and tests only: this is what streaming avoids)."""
        out = np.empty((len(self.labels), *self.image_shape), dtype=np.uint8)
        end = 0
        for chunk in self.read():
            out[end : end + len(chunk)] = chunk
            end += len(chunk)
        if end != len(out):
            raise ValueError(f"streamed split produced {end} images for {len(out)} labels")
        return out


def streamed(split: Split | StreamedSplit, size: int | None = None) -> StreamedSplit:
    """Either kind of split as a :class:`StreamedSplit` (an in-memory one yields slices of its arrays)."""
    if isinstance(split, StreamedSplit):
        return split
    return StreamedSplit(split.labels, split.image_shape, lambda: split.chunks(size))


@dataclass
class Dataset:
    """A dataset in memory, as sources produce it and the processed folder stores it."""

    name: str
    splits: dict[str, Split | StreamedSplit]
    class_names: list[str]
    source: str
    files: list[dict[str, Any]] = field(default_factory=list)  # raw files with their md5s
    captions: Captions | None = None  # one caption per image (format version 2)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.splits["train"].image_shape


def content_hash(splits: dict[str, Split], class_names: list[str], captions: Captions | None = None) -> str:
    """The hash of in-memory splits; :func:`write_processed` computes the same while streaming."""
    digest = _start_hash(class_names)
    for name in sorted(splits):
        split = splits[name]
        _hash_split_header(digest, name, len(split.labels), split.image_shape)
        _hash_array(digest, split.images)
        _hash_array(digest, split.labels.astype(np.int64))
    _hash_captions(digest, captions)
    return "sha256:" + digest.hexdigest()


def _hash_captions(digest: Any, captions: Captions | None) -> None:
    """Captions (vocabulary, then each split's token ids) extend the hash; none leave it as in version 1."""
    if captions is None:
        return
    digest.update(json.dumps({"captions": captions.vocabulary, "max_length": captions.max_length}).encode())
    for name in sorted(captions.tokens):
        _hash_array(digest, captions.tokens[name].astype(np.int32))


def _start_hash(class_names: list[str]) -> Any:
    digest = hashlib.sha256()
    digest.update(f"imagegen-processed-v{FORMAT_VERSION}".encode())
    digest.update(json.dumps(class_names).encode())
    return digest


def _hash_split_header(digest: Any, name: str, n: int, image_shape: tuple[int, ...]) -> None:
    shape = tuple(int(d) for d in (n, *image_shape))  # plain ints: numpy 2 reprs np.int64 differently
    digest.update(f"{name}:{shape}:{(int(n),)}".encode())


def _hash_array(digest: Any, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    if array.size:  # memoryview cannot cast a zero-size array (an empty split); it adds no bytes anyway
        digest.update(memoryview(array).cast("B"))


def _write_npy_header(fh: BinaryIO, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """The header ``np.save`` writes for a C-ordered array of ``shape`` (format 1.0), so files are identical."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(fh, header)


def _stream_images(split: StreamedSplit, path: Path, digest: Any) -> None:
    """Write the split's images to ``path`` chunk by chunk, hashing each; check the count and shape."""
    n, shape = len(split.labels), tuple(int(d) for d in split.image_shape)
    written = 0
    with open(path, "wb") as fh:
        _write_npy_header(fh, np.dtype(np.uint8), (n, *shape))
        for chunk in split.read():
            chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
            if chunk.shape[1:] != shape or written + len(chunk) > n:
                raise ValueError(f"{path.name}: chunk {chunk.shape} does not fit {n} images of {shape}")
            _hash_array(digest, chunk)
            fh.write(memoryview(chunk).cast("B") if chunk.size else b"")
            written += len(chunk)
    if written != n:
        raise ValueError(f"{path.name}: {written} images streamed for {n} labels")


def build_manifest(ds: Dataset, extra: dict[str, Any] | None = None, digest: str | None = None) -> dict[str, Any]:
    """The manifest; ``digest`` is the content hash when already computed (else it is computed here)."""
    h, w, c = ds.image_shape
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION if ds.captions is None else CAPTIONS_FORMAT_VERSION,
        "dataset": ds.name,
        "source": ds.source,
        "files": ds.files,
        "image_shape": [h, w, c],
        "dtype": "uint8",
        "value_range": [0, 255],
        "class_names": ds.class_names,
        "num_classes": len(ds.class_names),
        "counts": {name: int(len(s.labels)) for name, s in ds.splits.items()},
        "class_counts": {
            name: np.bincount(s.labels, minlength=len(ds.class_names)).astype(int).tolist()
            for name, s in ds.splits.items()
        },
        "content_hash": digest if digest is not None else content_hash(ds.splits, ds.class_names, ds.captions),  # type: ignore[arg-type]
    }
    if ds.captions is not None:
        manifest["captions"] = ds.captions.manifest()
    if extra:
        manifest.update(extra)
    return manifest


def write_processed(ds: Dataset, out_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``ds`` to ``out_dir`` atomically (the folder appears complete or not at all).

    Images are streamed chunk by chunk (see :class:`StreamedSplit`) and hashed as they are written, in
    the split order :func:`content_hash` uses, so an in-memory and a streamed dataset give the same hash.
    """
    for required in SPLITS:
        if required not in ds.splits:
            raise ValueError(f"dataset {ds.name!r} lacks the {required!r} split")
    digest = _start_hash(ds.class_names)
    with atomic_dir(out_dir, kind="dataset") as tmp:
        for name in sorted(ds.splits):
            split = streamed(ds.splits[name])
            labels = np.ascontiguousarray(split.labels.astype(np.int64))
            _hash_split_header(digest, name, len(labels), split.image_shape)
            _stream_images(split, tmp / f"{name}_images.npy", digest)
            _hash_array(digest, labels)
            np.save(tmp / f"{name}_labels.npy", labels, allow_pickle=False)
        if ds.captions is not None:
            _hash_captions(digest, ds.captions)
            for name in sorted(ds.splits):
                np.save(tmp / f"{name}_captions.npy", ds.captions.tokens[name].astype(np.int32), allow_pickle=False)
        manifest = build_manifest(ds, extra, digest="sha256:" + digest.hexdigest())
        write_json(tmp / MANIFEST, manifest)
    return manifest


# Keys every readable manifest has, with the JSON type each must be (format_version is checked first, alone).
REQUIRED_KEYS: dict[str, type] = {
    "dataset": str,
    "image_shape": list,
    "class_names": list,
    "counts": dict,
    "content_hash": str,
}


def _json_kind(value: Any) -> str:
    """How a reader would call the JSON type of ``value``."""
    if isinstance(value, bool):
        return "a boolean"
    kinds = {dict: "a JSON object", list: "a JSON list", str: "a string", int: "an integer", float: "a number"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "null")


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_manifest(manifest: Any, manifest_path: Path) -> dict[str, Any]:
    """``manifest`` when it has every key the readers index, with sane types; else a DataError naming the key.

    A manifest edited by hand or written by something else fails here in one line, not later as a KeyError.
    """
    if not isinstance(manifest, dict):
        raise DataError(
            f"{manifest_path}: {_json_kind(manifest)}, expected a JSON object (a processed-dataset manifest)"
        )
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise DataError(
            f"{manifest_path}: format_version {version!r}, this imagegen reads {READABLE_VERSIONS}; re-run ingest"
        )
    for key, kind in REQUIRED_KEYS.items():
        if key not in manifest:
            raise DataError(
                f"{manifest_path}: missing key {key!r}; expected a processed-dataset manifest with "
                f"{', '.join(REQUIRED_KEYS)} (re-run ingest)"
            )
        if not isinstance(manifest[key], kind):
            raise DataError(
                f"{manifest_path}: key {key!r} is {_json_kind(manifest[key])}, expected {_json_kind(kind())}"
            )
    shape = manifest["image_shape"]
    if len(shape) != 3 or not all(_is_count(d, 1) for d in shape):
        raise DataError(
            f"{manifest_path}: image_shape {shape!r}, expected 3 positive integers (height, width, channels)"
        )
    if not all(isinstance(name, str) for name in manifest["class_names"]):
        raise DataError(f"{manifest_path}: class_names holds a non-string, expected a list of class names")
    for split, count in manifest["counts"].items():
        if not _is_count(count, 0):
            raise DataError(f"{manifest_path}: counts[{split!r}] is {count!r}, expected a non-negative integer")
    captions = manifest.get("captions")
    if captions is not None and not (isinstance(captions, dict) and _is_count(captions.get("max_length"), 1)):
        raise DataError(f"{manifest_path}: captions has no positive integer max_length, expected a captions record")
    return manifest


def check_npy_size(path: Path) -> None:
    """Refuse ``path`` unless it is a regular .npy file holding every byte its header promises.

    np.load would report a short file as a memory-map or reshape error; this names the file and the sizes.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: missing; expected a processed-dataset array (re-run ingest)") from None
    except OSError as exc:
        raise DataError(f"{path}: unreachable ({exc.strerror}); expected a processed-dataset array") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file; expected a processed-dataset .npy array")
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return  # a newer header layout: np.load judges it
        except (ValueError, OSError, EOFError, SyntaxError) as exc:
            raise DataError(f"{path}: unreadable .npy header ({exc}); expected a processed-dataset array") from None
        expected = fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = path.stat().st_size
    if found < expected:
        raise DataError(
            f"{path}: truncated (expected {expected} bytes for shape {tuple(shape)} {dtype}, found {found}); "
            "re-run ingest"
        )


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
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest_path}: not valid JSON ({exc})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{manifest_path}: unreadable ({exc}); expected a processed-dataset manifest") from None
        dataset = cls(path=path, manifest=check_manifest(manifest, manifest_path))
        for name in dataset.manifest["counts"]:  # a short or missing array fails now, not after a model is built
            for array in dataset.array_paths(name):
                check_npy_size(array)
        return dataset

    def array_paths(self, name: str) -> list[Path]:
        """The .npy files of split ``name``: images, labels, and token ids when the dataset has captions."""
        kinds = ("images", "labels", "captions") if self.captions is not None else ("images", "labels")
        return [self.path / f"{name}_{kind}.npy" for kind in kinds]

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

    @property
    def captions(self) -> dict[str, Any] | None:
        """The manifest's ``captions`` record (vocabulary, max_length, source), None without captions."""
        return self.manifest.get("captions")

    def split(self, name: str, mmap: bool = True) -> Split:
        if name not in self.manifest["counts"]:
            raise DataError(f"{self.path}: no split {name!r} (has {sorted(self.manifest['counts'])})")
        mode = "r" if mmap else None
        img_path, lab_path = self.path / f"{name}_images.npy", self.path / f"{name}_labels.npy"
        check_npy_size(img_path)
        check_npy_size(lab_path)
        try:
            images = np.load(img_path, mmap_mode=mode, allow_pickle=False)
            labels = np.load(lab_path, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{img_path.parent}: cannot read split {name!r} ({exc})") from None
        expected = (self.manifest["counts"][name], *self.image_shape)
        if images.shape != expected or images.dtype != np.uint8:
            raise DataError(f"{img_path}: expected uint8 {expected}, found {images.dtype} {images.shape}")
        if labels.shape != expected[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{lab_path}: expected integer labels of shape {expected[:1]}, found {labels.dtype} {labels.shape}"
            )
        captions = None
        if self.captions is not None:
            cap_path = self.path / f"{name}_captions.npy"
            check_npy_size(cap_path)
            try:
                captions = np.load(cap_path, mmap_mode=mode, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"{cap_path}: cannot read the captions of split {name!r} ({exc})") from None
            if captions.shape != (expected[0], self.captions["max_length"]):
                raise DataError(
                    f"{cap_path}: expected ({expected[0]}, {self.captions['max_length']}) token ids, "
                    f"found {captions.shape}"
                )
        return Split(images=images, labels=labels, captions=captions)
