"""Ingest streams images into the processed ``.npy`` files: its memory does not grow with the dataset.

Sizes (see :func:`test_folder_ingest_peak_memory_stays_far_below_the_dataset`): 6,000 RGB PNGs of
64x64 are a 6000 * 64 * 64 * 3 B = 70.3 MiB uint8 array. The former ingest held that array about three
times over (the decoded images, ``np.stack``, the train/test fancy-index copies): ~210 MiB above the
interpreter (measured: see bench/scaling.py). Streaming holds one chunk (``CHUNK_BYTES`` = 2 MiB of images)
about twice (its decoded images and their stack) plus a fixed ~11 MiB (PIL's decoder, the file list, the
output buffers): ~15 MiB measured on this machine. The bound, 20 MiB above a baseline process that imports
the same modules and parses the same params, is under a third of the array, so a regression to
whole-dataset buffering (or to one full copy) fails, while allocator noise does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from imagegen.config import load_params
from imagegen.data.processed import (
    MANIFEST,
    Dataset,
    ProcessedDataset,
    content_hash,
    write_processed,
)
from imagegen.data.sources.folder import load_folder
from imagegen.stages.ingest import run_ingest

REPO = Path(__file__).resolve().parents[1]
N_IMAGES, SIDE = 6000, 64
DATASET_BYTES = N_IMAGES * SIDE * SIDE * 3
BOUND_BYTES = 20 * 2**20

# Runs the given code in a child process and prints the child's peak RSS (KiB on Linux): the launcher
# has no other children, so RUSAGE_CHILDREN is exactly that child's ru_maxrss.
LAUNCHER = """
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
assert proc.returncode == 0, proc.returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

PREAMBLE = """
import sys
from pathlib import Path
from imagegen.config import load_params
from imagegen.stages.ingest import run_ingest
params = load_params(None, ["tracking.enabled=false", "data.name=folder", f"data.path={sys.argv[1]}",
                            "data.image_size=64", "data.channels=3"])
"""
INGEST = PREAMBLE + "run_ingest(params, out_dir=Path(sys.argv[2]))\n"


def write_folder(root: Path, n: int, side: int, classes: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return root


def peak_rss_bytes(code: str, *args: str) -> int:
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return int(proc.stdout.strip().splitlines()[-1]) * 1024


def test_folder_ingest_peak_memory_stays_far_below_the_dataset(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "imgs", N_IMAGES, SIDE)
    baseline = peak_rss_bytes(PREAMBLE, str(root))
    peak = peak_rss_bytes(INGEST, str(root), str(tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert sum(manifest["counts"].values()) == N_IMAGES
    grown = peak - baseline
    print(
        f"ingest peak RSS {peak / 2**20:.1f} MiB, baseline {baseline / 2**20:.1f} MiB, "
        f"grown {grown / 2**20:.1f} MiB for a {DATASET_BYTES / 2**20:.1f} MiB dataset"
    )
    assert DATASET_BYTES > 3 * BOUND_BYTES  # the bound means something
    assert grown < BOUND_BYTES, f"ingest grew {grown / 2**20:.1f} MiB above the baseline"


def reference_content_hash(splits: dict, class_names: list[str]) -> str:
    """The content hash exactly as the in-memory ingest computed it before streaming (verbatim copy)."""
    digest = hashlib.sha256()
    digest.update(b"imagegen-processed-v1")
    digest.update(json.dumps(class_names).encode())
    for name in sorted(splits):
        split = splits[name]
        images = np.ascontiguousarray(split.images)
        labels = np.ascontiguousarray(split.labels.astype(np.int64))
        digest.update(f"{name}:{images.shape}:{labels.shape}".encode())
        for array in (images, labels):
            if array.size:
                digest.update(memoryview(array).cast("B"))
    return "sha256:" + digest.hexdigest()


def test_streamed_ingest_writes_the_bytes_and_hash_of_the_in_memory_format(tmp_path: Path, monkeypatch) -> None:
    """The same data written from memory (np.save, the former hash) and streamed in chunks: identical files."""
    monkeypatch.setattr("imagegen.data.processed.CHUNK_BYTES", 7 * 8 * 8 * 3)  # 7 images a chunk
    root = write_folder(tmp_path / "imgs", 90, 12, classes=3)
    params = load_params(
        None,
        ["tracking.enabled=false", "data.name=folder", f"data.path={root}", "data.image_size=8"],
    )
    streamed_dir = run_ingest(params, out_dir=tmp_path / "streamed")
    ds = load_folder(params.data, params.seed)  # in memory
    assert reference_content_hash(ds.splits, ds.class_names) == ProcessedDataset.open(streamed_dir).content_hash
    assert content_hash(ds.splits, ds.class_names) == ProcessedDataset.open(streamed_dir).content_hash  # type: ignore[arg-type]
    for name, split in ds.splits.items():
        np.save(tmp_path / f"{name}.npy", split.images, allow_pickle=False)
        expected = hashlib.md5((tmp_path / f"{name}.npy").read_bytes()).hexdigest()
        assert hashlib.md5((streamed_dir / f"{name}_images.npy").read_bytes()).hexdigest() == expected

    # Chunk boundaries do not matter: a Dataset of in-memory arrays gives the same manifest hash.
    memory = write_processed(Dataset("folder", ds.splits, ds.class_names, "s"), tmp_path / "memory")
    assert memory["content_hash"] == ProcessedDataset.open(streamed_dir).content_hash


def test_cifar10_streams_one_batch_file_at_a_time_with_the_same_hash(tmp_path: Path, helpers) -> None:
    """CIFAR-10 is written batch file by batch file; the result is the in-memory dataset's, byte for byte."""
    import gc

    from imagegen.data.sources.cifar10 import dataset_from_tarball

    tar = tmp_path / "cifar-10-python.tar.gz"
    helpers.write_cifar_tarball(tar, per_batch=3)
    in_memory = dataset_from_tarball(tar, "md5-not-checked-here")
    before = set(Path(tempfile.gettempdir()).glob("imagegen-cifar10-*"))
    streamed = dataset_from_tarball(tar, "md5-not-checked-here", stream=True)
    extracted = set(Path(tempfile.gettempdir()).glob("imagegen-cifar10-*")) - before
    assert len(extracted) == 1  # kept while the dataset is being written
    chunks = list(streamed.splits["train"].read())
    assert [len(c) for c in chunks] == [3] * 5  # one chunk per batch file
    manifest = write_processed(streamed, tmp_path / "out")
    assert manifest["content_hash"] == reference_content_hash(in_memory.splits, in_memory.class_names)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "train_images.npy"), in_memory.splits["train"].images)

    del streamed
    gc.collect()
    assert [p for p in extracted if p.exists()] == []  # the extraction folder goes with the dataset
