"""Stage ``ingest``: raw source -> verified, resized, versioned processed dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import Progress

from imagegen.config import Params
from imagegen.data.processed import Dataset, Split, write_processed
from imagegen.data.sources import get_source
from imagegen.data.transform import resize, to_channels
from imagegen.tracking import start_run


def shape_dataset(ds: Dataset, image_size: int, channels: int | None) -> Dataset:
    """Convert channels and resize every split (with a progress bar on large sets)."""
    total = sum(s.images.shape[0] for s in ds.splits.values())
    splits = {}
    with Progress(transient=True, disable=total < 5000) as progress:
        task = progress.add_task(f"resize {ds.name} to {image_size}x{image_size}", total=total)
        for name, split in ds.splits.items():
            images = split.images if channels is None else to_channels(split.images, channels)
            images = resize(images, image_size, progress=lambda n: progress.advance(task, n))
            splits[name] = Split(images, split.labels)
    return Dataset(ds.name, splits, ds.class_names, ds.source, ds.files)


def run_ingest(params: Params, out_dir: Path | None = None) -> Path:
    """Ingest ``params.data`` into ``out_dir`` (default ``data.processed_dir/<name>``); return that folder."""
    cfg = params.data
    out_dir = Path(out_dir) if out_dir is not None else cfg.output_dir
    raw = get_source(cfg.name)(cfg, params.seed)
    ds = shape_dataset(raw, cfg.image_size, cfg.channels)
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
        run_name=f"ingest-{cfg.name}",
        stage="ingest",
        dataset_hash=manifest["content_hash"],
        params={f"data.{k}": v for k, v in cfg.model_dump(mode="json").items()} | {"seed": params.seed},
    ) as run:
        run.log_metrics({f"count.{k}": v for k, v in manifest["counts"].items()})
        run.log_artifact(out_dir / "manifest.json")
    return out_dir
