"""Any folder of PNG/JPEG images; one subfolder per class gives labels.

Layouts accepted: images directly in the folder (one class, named after the folder), or only subfolders
each holding images (class = subfolder name, sorted). Anything else in the tree (a text file, a truncated
image, an empty class subfolder) stops ingestion with an error naming the file or folder: a silently skipped
file is a silently wrong dataset. So does a folder too small for a non-empty held-out split at
``data.test_fraction``: evaluation needs held-out images.

Captions: an optional ``captions.csv`` in the folder (header ``file,caption``; ``file`` relative to the folder,
e.g. ``cat/001.png``) gives every image one caption. Every row must name an existing image and a non-empty
caption, and every image needs a row; otherwise ingestion stops naming the csv row or the image.

Inputs stay inside ``data.path``. Every entry of the tree (hidden ones included) is resolved, symlinks
followed, before anything opens it; one that lands outside ``data.path`` (a linked image, a linked class
folder, a link to ``/etc/passwd``) stops ingestion unread. Symlinks that stay inside ``data.path`` are
followed: a class folder may link to another folder of the tree, an image to another image. Only regular
files are opened: a FIFO, socket or device named like an image is refused on its ``stat``, so it can
neither hang nor feed ingestion. Hidden entries inside the tree are otherwise ignored.

An image whose header claims more than ``data.max_image_pixels`` pixels (width x height) is refused before
it is decoded; so is one past Pillow's own decompression-bomb limit, with the same one-line message.
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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
PIXEL_BUDGET = "data.max_image_pixels"


class Entry(NamedTuple):
    """One entry of the tree: ``path`` as it is named under data.path (messages, listing, captions) and
    ``target``, where it resolves (what is stat-ed and read)."""

    path: Path
    target: Path


class Tree(NamedTuple):
    """``data.path`` as given (for messages) and resolved (the boundary every entry must stay inside)."""

    root: Path
    real: Path


def resolve_inside(path: Path, tree: Tree) -> Entry:
    """Where ``path`` leads, symlinks followed, without opening it; a DataError when that leaves data.path.

    Resolving reads link targets only, never the file, so a link out of the tree is refused unread.
    """
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise DataError(f"{path}: cannot resolve its symlinks ({exc}); expected an entry inside data.path") from None
    if not target.is_relative_to(tree.real):
        raise DataError(
            f"{path}: resolves to {target}, outside data.path {tree.root}; refusing to read it "
            "(expected every image and class folder inside data.path)"
        )
    return Entry(path, target)


def _mode(entry: Entry) -> int:
    """The ``st_mode`` of what ``entry`` resolves to (a dangling symlink is a DataError naming it)."""
    try:
        return entry.target.stat().st_mode
    except OSError as exc:
        raise DataError(f"{entry.path}: unreachable ({exc.strerror}); expected a PNG/JPEG image or a folder") from None


def _kind(mode: int) -> str:
    """A reader's name for a non-regular file type."""
    kinds = {
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISDIR: "a folder",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a special file")


def _entries(folder: Path, tree: Tree, skip: str | None = None) -> list[Entry]:
    """The visible entries of ``folder``, sorted and resolved; every entry, hidden or not, must stay inside."""
    entries = [resolve_inside(path, tree) for path in sorted(folder.iterdir())]
    return [e for e in entries if _visible(e.path) and e.path.name != skip]


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


def _list_images(folder: Path, tree: Tree, skip: str | None = None) -> list[Entry]:
    """The images of one class folder; anything else (a folder, another suffix, a FIFO) is a DataError."""
    files = []
    for entry in _entries(folder, tree, skip):
        mode = _mode(entry)
        if stat.S_ISDIR(mode):
            raise DataError(f"{entry.path}: nested folder inside a class folder; expected only PNG/JPEG images")
        if entry.path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{entry.path}: not a PNG/JPEG image (expected {sorted(IMAGE_SUFFIXES)})")
        if not stat.S_ISREG(mode):
            raise DataError(f"{entry.path}: {_kind(mode)}, not a regular file; expected a PNG/JPEG image file")
        files.append(entry)
    return files


def _open_within_budget(entry: Entry, max_pixels: int) -> Image.Image:
    """Open the image lazily (its header only) and refuse it before decoding when it claims more than
    ``max_pixels`` pixels: the decoded array, not the file, is what would fill memory."""
    try:
        with warnings.catch_warnings():  # the budget below decides; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(entry.target)
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{entry.path}: header claims too many pixels to decode ({str(exc).rstrip('.')}); "
            f"expected at most {PIXEL_BUDGET}={max_pixels} pixels per image"
        ) from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise DataError(
            f"{entry.path}: header claims {width}x{height} = {width * height} pixels; "
            f"expected at most {PIXEL_BUDGET}={max_pixels} pixels per image (raise it if the image is intended)"
        )
    return img


def _read_image(entry: Entry, mode: str, size: int, max_pixels: int) -> np.ndarray:
    """Load one image, converted to ``mode`` and resized to ``size`` x ``size`` (bilinear, antialiased)."""
    try:
        with _open_within_budget(entry, max_pixels) as img:
            if img.format not in ("PNG", "JPEG", "MPO"):
                raise DataError(f"{entry.path}: file is {img.format}, expected PNG or JPEG")
            img.load()
            img = img.convert(mode)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{entry.path}: unreadable image ({exc})") from None
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _captions_file(tree: Tree) -> Entry | None:
    """``captions.csv`` when the folder has one: inside data.path and a regular file, else a DataError."""
    path = tree.root / CAPTIONS_FILE
    if not os.path.lexists(path):
        return None
    entry = resolve_inside(path, tree)
    mode = _mode(entry)
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: {_kind(mode)}, not a regular file; expected a csv file of captions")
    return entry


def load_folder(cfg: DataConfig, seed: int, stream: bool = False) -> Dataset:
    """The folder as a dataset; ``stream=True`` (ingest) reads the images chunk by chunk while they are
    written, so memory does not grow with the folder, and a bad image then stops the write instead."""
    if cfg.path is None:
        raise DataNotFoundError("data.path: the `folder` source needs data.path set to a folder of images")
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataNotFoundError(f"{root}: data.path is not a folder")
    tree = Tree(root, root.resolve())
    entries = _entries(root, tree, skip=CAPTIONS_FILE)
    is_dir = [stat.S_ISDIR(_mode(e)) for e in entries]
    subdirs = [e for e, d in zip(entries, is_dir, strict=True) if d]
    if subdirs:
        stray = [e for e, d in zip(entries, is_dir, strict=True) if not d]
        if stray:
            raise DataError(f"{stray[0].path}: file beside class subfolders; put every image inside a class folder")
        classes = [(d.path.name, _list_images(d.path, tree)) for d in subdirs]
        for d, (_, files) in zip(subdirs, classes, strict=True):
            if not files:
                raise DataError(
                    f"{d.path}: empty class folder; expected PNG/JPEG images in every class subfolder"
                    " (remove it or add images)"
                )
    else:
        classes = [(root.name, _list_images(root, tree, skip=CAPTIONS_FILE))]
    if not any(files for _, files in classes):
        raise DataError(f"{root}: no PNG/JPEG images found")
    captions_file = _captions_file(tree)

    mode = "L" if cfg.channels == 1 else "RGB"
    images: list[Entry] = []
    labels, listing = [], hashlib.sha256()
    for label, (_, files) in enumerate(classes):
        for entry in files:
            images.append(entry)
            labels.append(label)
            listing.update(f"{entry.path.relative_to(root).as_posix()}:{md5_file(entry.target)}\n".encode())
    y = np.asarray(labels, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, cfg.test_fraction, seed)
    if len(test_idx) == 0:
        raise DataError(
            f"{root}: {len(y)} image(s) leave the held-out split empty at data.test_fraction={cfg.test_fraction:g}; "
            "expected enough images per class for at least one test image (add images or raise data.test_fraction)"
        )
    files = [{"name": f"{root.name}/ ({len(y)} images)", "sha256_of_listing": listing.hexdigest()}]
    captions = None
    indices = {"train": train_idx, "test": test_idx}
    if captions_file is not None:
        paths = [entry.path for entry in images]
        captions = _folder_captions(captions_file.path, root, paths, indices, cfg)
        files.append({"name": f"{root.name}/{CAPTIONS_FILE}", "md5": md5_file(captions_file.target)})
    return Dataset(
        name="folder",
        splits=_splits(images, y, indices, mode, cfg, stream),
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
    images: list[Entry],
    labels: np.ndarray,
    indices: dict[str, np.ndarray],
    mode: str,
    cfg: DataConfig,
    stream: bool,
) -> dict[str, Split | StreamedSplit]:
    """Split ``name`` = ``images[idx]`` in ``idx`` order, read a chunk at a time when streamed."""
    size, budget = cfg.image_size, cfg.max_image_pixels
    shape = (size, size, 1 if mode == "L" else 3)
    rows = chunk_rows(shape)

    def streamed(idx: np.ndarray) -> StreamedSplit:
        def read() -> Iterator[np.ndarray]:
            for start in range(0, len(idx), rows):
                yield np.stack([_read_image(images[i], mode, size, budget) for i in idx[start : start + rows]])

        return StreamedSplit(labels[idx], shape, read)

    splits = {name: streamed(idx) for name, idx in indices.items()}
    return splits if stream else {name: Split(s.images, s.labels) for name, s in splits.items()}  # type: ignore[misc]
