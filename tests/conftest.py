"""Shared fixtures: environment isolation, the shared real datasets, and writers of tiny raw files.

No test touches ``~/.cache``: ``isolated_env`` points ``$IMAGEGEN_CACHE_DIR`` into the test's tmp folder, unsets
``$IMAGEGEN_DATA_DIR`` and runs the test from tmp (so the default ``data/processed`` lands there too).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from imagegen import startup

startup.set_tensorflow_defaults()  # the kernels the `imagegen` command runs on, set before any test imports TF

from imagegen.config import Params, load_params  # noqa: E402
from tests.bad_input_support import TINY as BAD_INPUT_TINY  # noqa: E402

# Read once at import time, before any test's monkeypatch can change it.
_ENV_DATA_DIR = os.environ.get("IMAGEGEN_DATA_DIR")
_SIBLING_SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"

FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


# --------------------------------------------------------------------------------------------------
# Environment


@dataclass
class IsolatedEnv:
    root: Path  # the test's tmp folder, also the cwd
    cache: Path  # $IMAGEGEN_CACHE_DIR


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IsolatedEnv:
    """Cache in tmp, no $IMAGEGEN_DATA_DIR, no proxies (local test servers must be reached directly), cwd = tmp."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(cache))
    monkeypatch.delenv("IMAGEGEN_DATA_DIR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return IsolatedEnv(root=tmp_path, cache=cache)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The folder holding ``fashion_mnist/`` with the four official idx files ($IMAGEGEN_DATA_DIR or ../shared)."""
    candidates = [Path(_ENV_DATA_DIR)] if _ENV_DATA_DIR else []
    candidates.append(_SIBLING_SHARED)
    for folder in candidates:
        if all((folder / "fashion_mnist" / name).is_file() for name in FASHION_FILES):
            return folder
    pytest.skip(
        "official Fashion-MNIST idx files not found: looked for fashion_mnist/{"
        + ",".join(FASHION_FILES)
        + "} in "
        + ", ".join(str(c) for c in candidates)
        + " (set IMAGEGEN_DATA_DIR to a folder holding fashion_mnist/)"
    )


def make_params(*overrides: str, **data: object) -> Params:
    """Defaults + ``-S``-style overrides with tracking off; ``data`` keyword fields are assigned (validated)."""
    params = load_params(None, ["tracking.enabled=false", *overrides])
    for key, value in data.items():
        setattr(params.data, key, value)
    return params


# --------------------------------------------------------------------------------------------------
# Raw file writers


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_of(path: Path) -> str:
    return md5_bytes(Path(path).read_bytes())


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed idx encoding of a uint8 array: 0x0000, type 0x08, ndim, big-endian uint32 dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as a gzipped idx file (deterministic gzip header, so the md5 is stable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
    return path


@dataclass
class IdxSet:
    folder: Path
    arrays: dict[str, np.ndarray]  # filename -> array written

    def raw_files(self, base_url: str = "http://example.invalid/idx/") -> tuple:
        from imagegen.data.raw import RawFile

        return tuple(RawFile(name, md5_of(self.folder / name), base_url + name) for name in self.arrays)


def tiny_idx_arrays(n_train: int = 12, n_test: int = 5, side: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_idx_set(folder: Path, arrays: Mapping[str, np.ndarray] | None = None) -> IdxSet:
    """The four MNIST-style files (official names) in ``folder``."""
    arrays = dict(arrays) if arrays is not None else tiny_idx_arrays()
    for name, array in arrays.items():
        write_idx(Path(folder) / name, array)
    return IdxSet(Path(folder), arrays)


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"test",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(x) for x in rng.integers(0, 10, n)],
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }


def write_cifar_tarball(path: Path, per_batch: int = 2, batches: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """A CIFAR-10-format python tarball: cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}.

    Returns the batch dicts written (name -> dict) so tests can check values they planted.
    """
    written: dict[str, dict] = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        written[name] = dict(batches[name]) if batches and name in batches else cifar_batch(per_batch, seed=i)
    written["batches.meta"] = {
        b"label_names": [c.encode() for c in CIFAR_CLASSES],
        b"num_cases_per_batch": per_batch,
        b"num_vis": 3072,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        add_tar_dir(tar, "cifar-10-batches-py")
        for name, obj in written.items():
            add_tar_file(tar, f"cifar-10-batches-py/{name}", pickle.dumps(obj, protocol=2))
    return written


def add_tar_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_tar_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def add_tar_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def write_image(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    """Write a uint8 (H,W) or (H,W,3) array as PNG/JPEG (format from the suffix unless given)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(
        path, format=fmt, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {})
    )
    return path


def write_image_folder(
    root: Path,
    classes: Mapping[str, Sequence[int] | tuple[int, int, int]],
    per_class: int = 4,
    side: int = 8,
    suffixes: Iterable[str] = (".png",),
) -> Path:
    """One subfolder per class; every image of a class is a solid RGB colour, so pixels reveal the label."""
    suffixes = list(suffixes)
    for cls, colour in classes.items():
        for i in range(per_class):
            suffix = suffixes[i % len(suffixes)]
            img = np.empty((side, side, 3), dtype=np.uint8)
            img[...] = np.asarray(colour, dtype=np.uint8)
            write_image(Path(root) / cls / f"img{i:02d}{suffix}", img)
    return Path(root)


@pytest.fixture(scope="session")
def helpers():
    """This module's writers and ``make_params``, for tests (``helpers.write_idx(path, array)``, ...)."""
    import sys

    return sys.modules[__name__]


# The previous outputs of the bad-input suites (a test module may define its own of the same name).
@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A processed dataset written by ingest."""
    from imagegen.stages.ingest import run_ingest

    return run_ingest(load_params(None, BAD_INPUT_TINY), tmp_path_factory.mktemp("data") / "digits")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, digits: Path) -> Path:
    """An untrained tiny VAE model folder: what matters is the files (its latents are drawn host-side)."""
    from imagegen.artifact import save_model
    from imagegen.training.families import build_family

    family = build_family("vae", load_params(None, BAD_INPUT_TINY), (8, 8, 1), 10)
    return save_model(family, tmp_path_factory.mktemp("models") / "vae", {"step": 0})
