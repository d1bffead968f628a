"""Raw dataset sources. Each turns its raw files into a :class:`~imagegen.data.processed.Dataset` at its
native size; ingestion then resizes and writes the processed format. ``folder`` and ``cifar10`` give
streamed splits (images read chunk by chunk while they are written), so memory holds a chunk, not the set."""

from __future__ import annotations

from collections.abc import Callable

from imagegen.config import DataConfig
from imagegen.data.processed import Dataset


def get_source(name: str) -> Callable[[DataConfig, int], Dataset]:
    """The loader for a dataset name: ``loader(cfg, seed) -> Dataset``."""
    if name == "digits":
        from imagegen.data.sources.digits import load_digits

        return load_digits
    if name in ("mnist", "fashion_mnist"):
        from imagegen.data.sources.idx import load_idx_dataset

        return load_idx_dataset
    if name == "cifar10":
        from imagegen.data.sources.cifar10 import load_cifar10

        return lambda cfg, seed: load_cifar10(cfg, seed, stream=True)  # one batch file in memory at a time
    if name == "folder":
        from imagegen.data.sources.folder import load_folder

        return lambda cfg, seed: load_folder(cfg, seed, stream=True)  # images read while being written
    raise ValueError(f"unknown dataset {name!r}")
