"""``imagegen sample``: a trained model folder -> a PNG grid and an ``.npz`` of uint8 images.

Images are written as they are drawn, one sampler batch at a time, straight into the ``.npz`` (a zip of ``.npy``
files that ``np.load`` reads as usual), so memory does not grow with ``--n``: only disk and time do, and
``sample.max_images`` bounds those. The archive is built in a temporary sibling and renamed into place, so an
interrupted run leaves the previous ``samples.npz`` untouched. The grid shows the first :data:`GRID_IMAGES`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from imagegen import sampling
from imagegen.errors import ConfigError
from imagegen.fileio import atomic_path, write_text
from imagegen.images import save_grid
from imagegen.outputs import MARKER, check_output, marker_text
from imagegen.profiling import phase

GRID_IMAGES = 64
PROGRESS_LINES = 10
"""Without a terminal, progress is one stderr line per tenth of the images (runs of one batch print none)."""

Batches = Iterable[tuple[np.ndarray, np.ndarray | None]]


def max_images(params: Any = None) -> int:
    """``sample.max_images`` of ``params`` (the default when no params are given)."""
    from imagegen.config import SampleConfig

    return (params.sample if params is not None else SampleConfig()).max_images


def check_request(out_dir: Path, n: int, params: Any = None) -> None:
    """Refuse, before any model is loaded, an ``n`` outside 1..``sample.max_images`` or an ``out_dir`` that
    cannot become a folder (it, or a folder above it, is a file; or it is not writable)."""
    cap = max_images(params)
    if n < 1:
        raise ConfigError(f"--n {n}: expected at least 1 image")
    if n > cap:
        raise ConfigError(
            f"--n {n}: more than sample.max_images={cap}; expected at most {cap} images per run "
            "(raise sample.max_images with -S to draw more)"
        )
    out_dir = Path(out_dir)
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == out_dir else f" (above --out {out_dir})"
        raise ConfigError(f"{existing}: is a file; expected a folder{where} for grid.png and samples.npz")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{existing}: not writable; expected a folder (--out) this user can write to")
    for name in ("samples.npz", "grid.png"):
        if (out_dir / name).is_dir():
            raise ConfigError(f"{out_dir / name}: is a folder; expected a file (or nothing) there")


def run_sample(
    model_dir: Path,
    out_dir: Path,
    n: int,
    seed: int,
    show_progress: bool = True,
    params: Any = None,
    batch_size: int | None = None,
    **sampler: Any,
) -> Path:
    """Write ``samples.npz`` and ``grid.png``; sampler settings as in :func:`imagegen.sampling.generate_images`.

    ``batch_size`` (default :data:`imagegen.sampling.BATCH_SIZE`) is both the sampler's batch and the unit
    written to disk; the images are those ``generate_images`` returns for the same seed and batch size.
    ``prompt`` (in ``sampler``) needs a caption-conditioned model; any other is refused naming the folder.
    """
    out_dir = Path(out_dir)
    check_request(out_dir, n, params)
    check_output(out_dir, "samples", inputs=[model_dir])  # a user's folder is never written into
    if sampler.get("prompt") is not None:
        from imagegen.artifact import read_model_meta

        meta = read_model_meta(model_dir)
        if not meta["spec"].get(meta["family"], {}).get("captions", False):
            raise ConfigError(f"{model_dir}: --prompt needs a caption-conditioned model (ddpm.captions=true)")
    loaded, sample = sampling.load_sampler(model_dir, params.sample if params is not None else None, **sampler)
    size = batch_size or sampling.BATCH_SIZE
    out_dir.mkdir(parents=True, exist_ok=True)
    with phase("sample", "work"), progress(f"sample {loaded.name}", n, size, show_progress) as advance:
        batches = counted(sampling.iter_sample_batches(sample, loaded.family.spec, n, seed, size), advance)
        with atomic_path(out_dir / "samples.npz", suffix=".npz") as tmp:
            head = write_npz_stream(tmp, n, batches)
    save_grid(out_dir / "grid.png", head)
    write_text(out_dir / MARKER, marker_text("samples"))
    return out_dir


def counted(batches: Batches, advance: Callable[[int], None]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``batches`` unchanged, reporting each batch's image count to ``advance`` once it has been drawn."""
    for images, labels in batches:
        advance(len(images))
        yield images, labels


@contextlib.contextmanager
def progress(title: str, total: int, batch_size: int, show: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(k)``: a live bar on a terminal, else a stderr line per tenth of ``total`` (when the work
    spans more than one batch), so long runs in logs (DVC, CI) still show where they are."""
    if not show:
        yield lambda k: None
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(title, total=total)
            yield lambda k: bar.advance(task, k)
        return
    done, shown = 0, 0

    def advance(k: int) -> None:
        nonlocal done, shown
        done += k
        tenth = done * PROGRESS_LINES // total
        if total > batch_size and tenth > shown:
            shown = tenth
            print(f"{title}: {done}/{total} images", file=sys.stderr, flush=True)

    yield advance


def write_npz_stream(path: Path, n: int, batches: Batches) -> np.ndarray:
    """Write an ``.npz`` with uint8 ``images`` (n,H,W,C) (and int32 ``labels`` (n,) when the batches carry them)
    batch by batch, holding one batch in memory at a time; returns the first :data:`GRID_IMAGES` images.

    ``images.npy`` is streamed into the (deflated) zip as each batch comes; labels are spooled to a temporary
    file meanwhile and added after it, since a zip is written one entry at a time.
    """
    head: list[np.ndarray] = []
    kept = written = 0
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive,
        tempfile.TemporaryFile() as spool,
    ):
        has_labels = False
        with contextlib.ExitStack() as entry_open:
            entry: IO[bytes] | None = None
            for images, labels in batches:
                if entry is None:
                    entry = entry_open.enter_context(archive.open("images.npy", "w", force_zip64=True))
                    write_npy_header(entry, images.dtype, (n, *images.shape[1:]))
                entry.write(np.ascontiguousarray(images).data)
                written += len(images)
                if kept < GRID_IMAGES:
                    head.append(images[: GRID_IMAGES - kept].copy())
                    kept += len(head[-1])
                if labels is not None:
                    has_labels = True
                    spool.write(np.ascontiguousarray(labels, dtype=np.int32).data)
        if written != n:
            raise RuntimeError(f"sampler gave {written} images, expected {n}")  # a bug, not bad input
        if has_labels:
            spool.seek(0)
            with archive.open("labels.npy", "w", force_zip64=True) as entry:
                write_npy_header(entry, np.dtype(np.int32), (n,))
                shutil.copyfileobj(spool, entry, 1 << 20)
    return np.concatenate(head)


def write_npy_header(fh: IO[bytes], dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """The ``.npy`` header of a C-ordered array of ``dtype`` and ``shape``, whose data follows as raw bytes."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(fh, header)
