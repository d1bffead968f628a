"""Any folder of PNG/JPEG images; one subfolder per class gives labels.

Layouts accepted: images directly in the folder (one class, named after the folder), or only subfolders
each holding images (class = subfolder name, sorted). Anything else in the tree (a text file, a truncated
image, an empty class subfolder) stops ingestion with an error naming the file or folder: a silently skipped
file is a silently wrong dataset. So does a folder too small for a non-empty held-out split at
``data.test_fraction``: evaluation needs held-out images.

Captions: an optional ``captions.csv`` in the folder (header ``file,caption``; ``file`` relative to the folder,
e.g. ``cat/001.png``) gives every image one caption. Every row must name an existing image and a non-empty
caption, and every image needs a row; otherwise ingestion stops naming the csv row or the image.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from imagegen.config import DataConfig
from imagegen.data.captions import Captions, captions_from_texts
from imagegen.data.processed import Dataset, Split, StreamedSplit, chunk_rows
from imagegen.data.transform import stratified_split
from imagegen.errors import DataError, DataNotFoundError
from imagegen.fileio import md5_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CAPTIONS_FILE = "captions.csv"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def read_captions_csv(csv_path: Path, root: Path, images: list[Path]) -> dict[Path, str]:
    """``{image path: caption}`` from ``csv_path``; a DataError names the bad row or the uncaptioned image."""
    known = set(images)
    captions: dict[Path, str] = {}
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header[:2]] != ["file", "caption"]:
                raise DataError(f"{csv_path}: row 1: expected the header 'file,caption', got {header!r}")
            for row in reader:
                where = f"{csv_path}: row {reader.line_num}"
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) != 2:
                    raise DataError(f"{where}: expected 2 columns (file,caption), got {len(row)}: {row!r}")
                name, caption = row[0].strip(), row[1].strip()
                path = root / name
                if path not in known:
                    raise DataError(f"{where}: file {name!r} does not exist in {root} (or is not one of its images)")
                if not caption:
                    raise DataError(f"{where}: empty caption for {name!r}; expected a non-empty caption")
                if path in captions:
                    raise DataError(f"{where}: second caption for {name!r}; expected one row per image")
                captions[path] = caption
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: unreadable captions file ({exc})") from None
    for path in images:
        if path not in captions:
            raise DataError(
                f"{csv_path}: no row for image {path.relative_to(root).as_posix()!r}; expected one caption per image"
            )
    return captions


def _list_images(folder: Path, skip: str | None = None) -> list[Path]:
    files = []
    for path in sorted(p for p in folder.iterdir() if _visible(p) and p.name != skip):
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
    entries = sorted(p for p in root.iterdir() if _visible(p) and p.name != CAPTIONS_FILE)
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
        classes = [(root.name, _list_images(root, skip=CAPTIONS_FILE))]
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
    files = [{"name": f"{root.name}/ ({len(y)} images)", "sha256_of_listing": listing.hexdigest()}]
    captions = None
    if (root / CAPTIONS_FILE).is_file():
        captions = _folder_captions(root / CAPTIONS_FILE, root, paths, {"train": train_idx, "test": test_idx}, cfg)
        files.append({"name": f"{root.name}/{CAPTIONS_FILE}", "md5": md5_file(root / CAPTIONS_FILE)})
    return Dataset(
        name="folder",
        splits=_splits(paths, y, {"train": train_idx, "test": test_idx}, mode, cfg.image_size, stream),
        class_names=[name for name, _ in classes],
        source=f"image folder {root}",
        files=files,
        captions=captions,
    )


def _folder_captions(
    csv_path: Path, root: Path, paths: list[Path], indices: dict[str, np.ndarray], cfg: DataConfig
) -> Captions:
    """Token ids of every split from ``captions.csv`` (vocabulary: the training split's words)."""
    by_path = read_captions_csv(csv_path, root, paths)
    texts = {name: [by_path[paths[i]] for i in idx] for name, idx in indices.items()}
    return captions_from_texts(texts, cfg.caption_max_length, CAPTIONS_FILE)


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
