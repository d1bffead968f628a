"""MNIST and Fashion-MNIST from their official idx ``.gz`` files (LeCun et al.; Xiao et al. 2017)."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagegen.config import DataConfig
from imagegen.data.processed import Dataset, Split
from imagegen.data.raw import RawFile, resolve
from imagegen.errors import DataError

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# Published md5 sums (Fashion-MNIST README; the torchvision mirror list for MNIST).
FILES: dict[str, tuple[RawFile, ...]] = {
    "fashion_mnist": (
        RawFile(
            "train-images-idx3-ubyte.gz",
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            _FASHION_URL + "train-images-idx3-ubyte.gz",
        ),
        RawFile(
            "train-labels-idx1-ubyte.gz",
            "25c81989df183df01b3e8a0aad5dffbe",
            _FASHION_URL + "train-labels-idx1-ubyte.gz",
        ),
        RawFile(
            "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", _FASHION_URL + "t10k-images-idx3-ubyte.gz"
        ),
        RawFile(
            "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", _FASHION_URL + "t10k-labels-idx1-ubyte.gz"
        ),
    ),
    "mnist": (
        RawFile(
            "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", _MNIST_URL + "train-images-idx3-ubyte.gz"
        ),
        RawFile(
            "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", _MNIST_URL + "train-labels-idx1-ubyte.gz"
        ),
        RawFile(
            "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", _MNIST_URL + "t10k-images-idx3-ubyte.gz"
        ),
        RawFile(
            "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", _MNIST_URL + "t10k-labels-idx1-ubyte.gz"
        ),
    ),
}

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}

_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped idx file of unsigned bytes (magic 0x0000 08 DD), checking its header against its length."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc}); it is corrupt or truncated") from None
    if len(data) < 4:
        raise DataError(f"{path}: too short for an idx header ({len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _UBYTE or ndim < 1:
        raise DataError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{path}: idx header promises {ndim} dimensions ({header_len} header bytes), file has {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(dims))
    if len(data) - header_len != expected:
        raise DataError(f"{path}: header promises {dims} = {expected} bytes, file has {len(data) - header_len}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def dataset_from_idx(
    name: str, paths: dict[str, Path], class_names: Sequence[str], source: str, md5s: dict[str, str]
) -> Dataset:
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_path = paths[f"{prefix}-images-idx3-ubyte.gz"]
        lab_path = paths[f"{prefix}-labels-idx1-ubyte.gz"]
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3:
            raise DataError(f"{img_path}: expected 3 dimensions (N,H,W), found {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{lab_path}: {labels.shape[0]} labels for {images.shape[0]} images in {img_path.name}")
        if labels.size and int(labels.max()) >= len(class_names):
            raise DataError(f"{lab_path}: label {int(labels.max())} outside 0..{len(class_names) - 1}")
        splits[split] = Split(images[..., None].copy(), labels.astype(np.int64))
    files = [{"name": fn, "md5": md5s[fn]} for fn in sorted(paths)]
    return Dataset(name=name, splits=splits, class_names=list(class_names), source=source, files=files)


def load_idx_dataset(cfg: DataConfig, seed: int, files: tuple[RawFile, ...] | None = None) -> Dataset:
    del seed  # official splits
    files = files if files is not None else FILES[cfg.name]
    paths = resolve(cfg.name, files, explicit=cfg.path, download=cfg.download, mirror=cfg.mirror)
    return dataset_from_idx(
        cfg.name,
        paths,
        CLASS_NAMES[cfg.name],
        source=f"official idx files ({files[0].url.rsplit('/', 1)[0]}/)",
        md5s={f.filename: f.md5 for f in files},
    )
