"""Any folder of PNG/JPEG images; one subfolder per class gives labels.

Layouts accepted: images directly in the folder (one class, named after the folder), or only subfolders
each holding images (class = subfolder name, sorted). Anything else in the tree (a text file, a truncated
image, an empty class subfolder) stops ingestion with an error naming the file or folder: a silently skipped
file is a silently wrong dataset. So does a folder too small for a non-empty held-out split at
``data.test_fraction``: evaluation needs held-out images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from imagegen.config import DataConfig
from imagegen.data.processed import Dataset, Split, StreamedSplit, chunk_rows
from imagegen.data.transform import stratified_split
from imagegen.errors import DataError, DataNotFoundError
from imagegen.fileio import md5_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _list_images(folder: Path) -> list[Path]:
    files = []
    for path in sorted(p for p in folder.iterdir() if _visible(p)):
        if path.is_dir():
            raise DataError(f"{path}: nested folder inside a class folder; expected only PNG/JPEG images")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not a PNG/JPEG image (expected {sorted(IMAGE_SUFFIXES)})")
        files.append(path)
    return files


def _read_image(path: Path, mode: str, size: int) -> np.ndarray:
    """Load one image, converted to ``mode`` and resized to ``size`` x ``size`` (bilinear, antialiased)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.format not in ("PNG", "JPEG", "MPO"):
                raise DataError(f"{path}: file is {img.format}, expected PNG or JPEG")
            img = img.convert(mode)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def load_folder(cfg: DataConfig, seed: int, stream: bool = False) -> Dataset:
    """The folder as a dataset; ``stream=True`` (ingest) reads the images chunk by chunk while they are
    written, so memory does not grow with the folder, and a bad image then stops the write instead."""
    if cfg.path is None:
        raise DataNotFoundError("data.path: the `folder` source needs data.path set to a folder of images")
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: data.path is not a folder")
    entries = sorted(p for p in root.iterdir() if _visible(p))
    subdirs = [p for p in entries if p.is_dir()]
    if subdirs:
        stray = [p for p in entries if not p.is_dir()]
        if stray:
            raise DataError(f"{stray[0]}: file beside class subfolders; put every image inside a class folder")
        classes = [(d.name, _list_images(d)) for d in subdirs]
        for d, (_, files) in zip(subdirs, classes, strict=True):
            if not files:
                raise DataError(
                    f"{d}: empty class folder; expected PNG/JPEG images in every class subfolder"
                    " (remove it or add images)"
                )
    else:
        classes = [(root.name, _list_images(root))]
    if not any(files for _, files in classes):
        raise DataError(f"{root}: no PNG/JPEG images found")

    mode = "L" if cfg.channels == 1 else "RGB"
    paths, labels, listing = [], [], hashlib.sha256()
    for label, (_, files) in enumerate(classes):
        for path in files:
            paths.append(path)
            labels.append(label)
            listing.update(f"{path.relative_to(root).as_posix()}:{md5_file(path)}\n".encode())
    y = np.asarray(labels, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, cfg.test_fraction, seed)
    if len(test_idx) == 0:
        raise DataError(
            f"{root}: {len(y)} image(s) leave the held-out split empty at data.test_fraction={cfg.test_fraction:g}; "
            "expected enough images per class for at least one test image (add images or raise data.test_fraction)"
        )
    return Dataset(
        name="folder",
        splits=_splits(paths, y, {"train": train_idx, "test": test_idx}, mode, cfg.image_size, stream),
        class_names=[name for name, _ in classes],
        source=f"image folder {root}",
        files=[{"name": f"{root.name}/ ({len(y)} images)", "sha256_of_listing": listing.hexdigest()}],
    )


def _splits(
    paths: list[Path], labels: np.ndarray, indices: dict[str, np.ndarray], mode: str, size: int, stream: bool
) -> dict[str, Split | StreamedSplit]:
    """Split ``name`` = images ``paths[idx]`` in ``idx`` order, read a chunk at a time when streamed."""
    shape = (size, size, 1 if mode == "L" else 3)
    rows = chunk_rows(shape)

    def streamed(idx: np.ndarray) -> StreamedSplit:
        def read() -> Iterator[np.ndarray]:
            for start in range(0, len(idx), rows):
                yield np.stack([_read_image(paths[i], mode, size) for i in idx[start : start + rows]])

        return StreamedSplit(labels[idx], shape, read)

    splits = {name: streamed(idx) for name, idx in indices.items()}
    return splits if stream else {name: Split(s.images, s.labels) for name, s in splits.items()}  # type: ignore[misc]
