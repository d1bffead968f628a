"""CIFAR-10 from the official python tarball (Krizhevsky 2009).

The tarball's md5 is verified before it is opened; its members are checked so none can land outside the
extraction folder; only then are the batch files (pickles, hence the order) unpickled.

Ingest streams (``stream=True``): the labels are read up front, the images one batch file (10,000 images)
at a time while they are written, so memory holds one batch rather than the 50,000-image train split. The
extraction folder then lives as long as the returned dataset object.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imagegen.config import DataConfig
from imagegen.data.processed import Dataset, Split, StreamedSplit
from imagegen.data.raw import RawFile, resolve, safe_extract
from imagegen.errors import DataError

TARBALL = RawFile(
    "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
)
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing from the CIFAR-10 archive")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")  # noqa: S301 - archive md5-verified before this point
    except Exception as exc:  # pickle raises many types on bad bytes
        raise DataError(f"{path}: unreadable CIFAR-10 batch ({type(exc).__name__}: {exc})") from None


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: uint8 images (N, 32, 32, 3) channel-last and int64 labels (N,)."""
    batch = _unpickle(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labs = np.asarray(batch[b"labels"], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{path}: batch lacks key {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labs.shape[0]:
        raise DataError(f"{path}: expected data (N, 3072) with N labels, found {data.shape}/{labs.shape}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labs


def _read_batches(folder: Path, names: tuple[str, ...]) -> StreamedSplit:
    """The batches as one split: labels now (each batch read once), images batch by batch on each pass."""
    labels = np.concatenate([_read_batch(folder / name)[1] for name in names])

    def read() -> Iterator[np.ndarray]:
        for name in names:
            yield _read_batch(folder / name)[0]

    return StreamedSplit(labels, (32, 32, 3), read)


def dataset_from_tarball(tar_path: Path, md5: str, stream: bool = False) -> Dataset:
    tmp = Path(tempfile.mkdtemp(prefix="imagegen-cifar10-"))
    try:
        root = safe_extract(tar_path, tmp) / FOLDER
        meta = _unpickle(root / "batches.meta")
        class_names = [n.decode() for n in meta.get(b"label_names", [])]
        if len(class_names) != 10:
            raise DataError(f"{root / 'batches.meta'}: expected 10 label names, found {len(class_names)}")
        streamed = {"train": _read_batches(root, TRAIN_BATCHES), "test": _read_batches(root, TEST_BATCHES)}
        splits = streamed if stream else {k: Split(v.images, v.labels) for k, v in streamed.items()}
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not stream:
        shutil.rmtree(tmp, ignore_errors=True)
    ds = Dataset(
        name="cifar10",
        splits=splits,
        class_names=class_names,
        source=f"official python tarball ({TARBALL.url})",
        files=[{"name": tar_path.name, "md5": md5}],
    )
    if stream:  # the batch files are read while the dataset is written: remove them once it is dropped
        weakref.finalize(ds, shutil.rmtree, tmp, True)
    return ds


def load_cifar10(cfg: DataConfig, seed: int, tarball: RawFile = TARBALL, stream: bool = False) -> Dataset:
    del seed  # official splits
    paths = resolve("cifar10", (tarball,), explicit=cfg.path, download=cfg.download, mirror=cfg.mirror)
    return dataset_from_tarball(paths[tarball.filename], tarball.md5, stream=stream)
