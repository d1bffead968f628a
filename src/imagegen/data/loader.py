"""Batches for training: seeded, shuffled, scaled to [-1, 1].

:class:`BatchStream` needs numpy alone and reads the memory-mapped arrays, so it works under any Keras backend
(JAX on a GPU box without TensorFlow). Its position is a small JSON-able state saved with checkpoints, so a
resumed run sees exactly the batches an uninterrupted one would. :func:`tf_dataset` wraps it for ``tf.data``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagegen.data.processed import ProcessedDataset, Split


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255] (clipped, rounded)."""
    return np.clip(np.rint((np.asarray(images, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclass
class Batch:
    images: np.ndarray  # float32 (B, H, W, C) in [-1, 1]; only rows ``stream.rows`` of them when that is set
    labels: np.ndarray  # int32 (B,), always the whole global batch (host-side noise draws follow them)
    captions: np.ndarray | None = None  # int32 token ids (B, L) of a dataset with captions, whole global batch


class BatchStream:
    """Endless shuffled batches over one split; reshuffles each epoch from ``seed`` and the epoch number."""

    def __init__(self, split: Split, batch_size: int, seed: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.seed = seed
        self.n = split.images.shape[0]
        if self.n == 0:
            raise ValueError("cannot draw batches from an empty split")
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)
        # Multi-host data parallelism: the rows of each global batch this process feeds to its devices.
        # Every process walks the same global order (same seed), so the processes' rows partition it.
        self.rows: slice | None = None

    @classmethod
    def from_processed(cls, path: Any, batch_size: int, seed: int, split: str = "train") -> BatchStream:
        return cls(ProcessedDataset.open(path).split(split), batch_size, seed)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_indices(self) -> np.ndarray:
        out = []
        need = self.batch_size
        while need:
            take = min(need, self.n - self.position)
            out.append(self._order[self.position : self.position + take])
            self.position += take
            need -= take
            if self.position == self.n:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
        return np.concatenate(out)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        idx = self.next_indices()
        read = idx if self.rows is None else idx[self.rows]
        order = np.argsort(read, kind="stable")  # sorted reads are kinder to a memory map
        images = np.empty((len(read), *self.split.images.shape[1:]), dtype=np.uint8)
        images[order] = self.split.images[read[order]]
        captions = None if self.split.captions is None else np.asarray(self.split.captions[idx], dtype=np.int32)
        return Batch(to_unit_range(images), self.split.labels[idx].astype(np.int32), captions)

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "batch_size": self.batch_size}

    def restore(self, state: dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = self._permutation(self.epoch)


def tf_dataset(stream: BatchStream, prefetch: int = 2) -> Any:
    """A ``tf.data.Dataset`` of ``(images, labels)`` drawn from ``stream`` (TensorFlow backend only)."""
    import tensorflow as tf

    h, w, c = stream.split.images.shape[1:]

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in stream:
            yield batch.images, batch.labels

    spec = (
        tf.TensorSpec(shape=(stream.batch_size, h, w, c), dtype=tf.float32),
        tf.TensorSpec(shape=(stream.batch_size,), dtype=tf.int32),
    )
    return tf.data.Dataset.from_generator(gen, output_signature=spec).prefetch(prefetch)
