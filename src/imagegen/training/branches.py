"""One batch as independent row shards ("branches") that the CPU runs side by side.

On a CPU TensorFlow runs each op of a graph on its intra-op threads and independent ops concurrently on its
inter-op threads. The default networks' ops are too small to split well over threads, so a batch computed as
``k`` independent shards, one thread each, finishes sooner than the whole batch on ``k`` threads (see
:mod:`imagegen.startup`). A shard's result is its rows' result: at inference
rows never interact, and a *batch-separable* training loss (the batch mean of per-image terms, with no batch
statistics in the networks: a family's ``batch_separable``) is the row-weighted mean of its shards' losses,
so the gradients are the batch's to float rounding.

The shard count follows the intra-op setting that :func:`imagegen.startup.tensorflow_defaults` made (usable
cores // intra-op threads); it is 1 (no split) on JAX, on a GPU, and where TensorFlow may use every core per op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import keras

from imagegen.startup import INTRAOP_THREADS_ENV, MAX_BRANCHES, usable_cores

MIN_ROWS_PER_BRANCH = 8
"""Batches with fewer rows per shard run whole: a shard of a few rows is all overhead."""


def cpu_branches() -> int:
    """Row shards per batch for this process: ``usable cores // intra-op threads`` with TensorFlow on a CPU
    (at most :data:`~imagegen.startup.MAX_BRANCHES`), else 1."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    from imagegen.training.precision import accelerator

    if accelerator() != "cpu":
        return 1
    intra = tf.config.threading.get_intra_op_parallelism_threads() or int(os.environ.get(INTRAOP_THREADS_ENV) or 0)
    if intra <= 0:  # TensorFlow's default: every core for each op
        return 1
    return max(1, min(usable_cores() // intra, MAX_BRANCHES))


def branches_for(rows: int | None, branches: int) -> int:
    """``branches``, or 1 when ``rows`` (a batch size; None: unknown) is too small to split."""
    if rows is None or branches <= 1 or rows < branches * MIN_ROWS_PER_BRANCH:
        return 1
    return branches


def row_bounds(rows: Any, branches: int) -> list[tuple[Any, Any]]:
    """``[start, stop)`` of each of ``branches`` near-equal shards of ``rows`` (an int or a scalar tensor)."""
    return [(i * rows // branches, (i + 1) * rows // branches) for i in range(branches)]


def shard(value: Any, start: Any, stop: Any) -> Any:
    """Rows ``start:stop`` of ``value``; a scalar (a value shared by every row) as it is."""
    return value if len(getattr(value, "shape", ())) == 0 else value[start:stop]


def split_mean(
    fn: Callable[[Mapping[str, Any]], tuple[Any, dict[str, Any]]], batch: Mapping[str, Any], branches: int
) -> tuple[Any, dict[str, Any]]:
    """``fn(batch)`` for a batch-separable ``fn`` (-> (loss, metrics), batch means) computed on ``branches``
    row shards: each shard's outputs weighted by its share of the rows, so the result is the whole batch's."""
    if branches <= 1:
        return fn(batch)
    rows = keras.ops.shape(next(v for v in batch.values() if len(getattr(v, "shape", ())) > 0))[0]
    total = keras.ops.cast(rows, "float32")
    loss: Any = 0.0
    metrics: dict[str, Any] = {}
    for start, stop in row_bounds(rows, branches):
        part_loss, part_metrics = fn({k: shard(v, start, stop) for k, v in batch.items()})
        weight = keras.ops.cast(stop - start, "float32") / total
        loss = loss + weight * keras.ops.cast(part_loss, "float32")
        for name, value in part_metrics.items():
            metrics[name] = metrics.get(name, 0.0) + weight * keras.ops.cast(value, "float32")
    return loss, metrics


def split_rows(fn: Callable[..., Any], inputs: tuple[Any, ...], branches: int) -> Any:
    """``fn(*inputs)`` of a row-wise ``fn`` (no interaction between rows) on ``branches`` row shards, the
    outputs (any structure of arrays) concatenated back in row order."""
    if branches <= 1:
        return fn(*inputs)
    rows = keras.ops.shape(inputs[0])[0]
    parts = [fn(*(shard(x, start, stop) for x in inputs)) for start, stop in row_bounds(rows, branches)]
    return keras.tree.map_structure(lambda *outs: keras.ops.concatenate(list(outs), axis=0), *parts)
