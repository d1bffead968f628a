"""Stage ``ingest``: raw source -> verified, resized, versioned processed dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from imagegen.config import Params
from imagegen.data.captions import template_captions
from imagegen.data.processed import Dataset, streamed, write_processed
from imagegen.data.sources import get_source
from imagegen.data.transform import resize, to_channels
from imagegen.outputs import check_output
from imagegen.tracking import TrackingProcess, start_run


def shape_dataset(ds: Dataset, image_size: int, channels: int | None, progress: Progress) -> Dataset:
    """Convert channels and resize every split, chunk by chunk as the splits are written (streamed)."""
    total = sum(len(s.labels) for s in ds.splits.values())
    task = progress.add_task(f"ingest {ds.name} at {image_size}x{image_size}", total=total)

    def shape(chunk: np.ndarray) -> np.ndarray:
        chunk = chunk if channels is None else to_channels(chunk, channels)
        out = resize(chunk, image_size)
        progress.advance(task, len(out))
        return out

    splits = {}
    for name, split in ds.splits.items():
        c = split.image_shape[2] if channels is None else channels
        splits[name] = streamed(split).map(shape, (image_size, image_size, c))
    return Dataset(ds.name, splits, ds.class_names, ds.source, ds.files, ds.captions)


def run_ingest(params: Params, out_dir: Path | None = None, tracking: TrackingProcess | None = None) -> Path:
    """Ingest ``params.data`` into ``out_dir`` (default ``data.processed_dir/<name>``); return that folder."""
    cfg = params.data
    out_dir = Path(out_dir) if out_dir is not None else cfg.output_dir
    check_output(out_dir, "dataset", inputs=[cfg.path])  # before any reading
    raw = get_source(cfg.name)(cfg, params.seed)
    if raw.captions is None and cfg.caption_template is not None:  # a caption per class (folder: captions.csv)
        labels = {name: split.labels for name, split in raw.splits.items()}
        raw.captions = template_captions(cfg.caption_template, raw.class_names, labels, cfg.caption_max_length)
    total = sum(len(s.labels) for s in raw.splits.values())
    with Progress(transient=True, disable=total < 5000) as progress:
        ds = shape_dataset(raw, cfg.image_size, cfg.channels, progress)  # streamed: shaped while written
        settings: dict[str, Any] = {
            "image_size": cfg.image_size,
            "channels": ds.image_shape[2],
            "seed": params.seed,
        }
        if cfg.name in ("digits", "folder"):
            settings["test_fraction"] = cfg.test_fraction
        manifest = write_processed(ds, out_dir, extra={"ingest": settings})
    with start_run(
        params.tracking,
        process=tracking,
        run_name=f"ingest-{cfg.name}",
        stage="ingest",
        dataset_hash=manifest["content_hash"],
        params={f"data.{k}": v for k, v in cfg.model_dump(mode="json").items()} | {"seed": params.seed},
    ) as run:
        run.log_metrics({f"count.{k}": v for k, v in manifest["counts"].items()})
        run.log_artifact(out_dir / "manifest.json")
    return out_dir
