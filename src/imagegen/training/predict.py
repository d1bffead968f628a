"""A compiled inference call for the current backend (the samplers call a network hundreds of times)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from imagegen.profiling import phase


def compiled_predictor(model: keras.Model) -> Callable[..., Any]:
    """``predict(*inputs)`` = ``model(list(inputs), training=False)`` as one compiled function: a TensorFlow
    graph (XLA-compiled on a GPU, :func:`imagegen.training.precision.resolve_jit`; on a CPU the rows in shards
    run side by side, :mod:`imagegen.training.branches`), or ``jax.jit``.

    The compiled function reads the model's variables at call time (TensorFlow captures them; JAX gets
    their current values passed in), so later weight updates are seen. A ragged last batch runs padded to
    the batch before it (:func:`pad_small_batches`), so it does not compile a program of its own.
    """
    return pad_small_batches(first_call_per_shape_as_compile(_compiled(model)))


def pad_small_batches(fn: Callable[..., Any], max_waste: float = 0.25) -> Callable[..., Any]:
    """``fn`` that runs a batch at most ``max_waste`` smaller than the largest it has run padded with zero rows
    to that size, and returns only the real rows.

    Sampling 1000 images in batches of 256 ends with 232: with XLA every new batch shape is a compile of its
    own, which costs more than the padded rows do. Rows never interact at
    inference (no batch statistics), so the real rows' outputs are those of an unpadded call. A much
    smaller batch (e.g. a timing run at half the size) is run as it is: padding it would cost more than a
    compile and would distort its timing.
    """
    largest = 0

    def call(*xs: Any) -> Any:
        nonlocal largest
        k = int(xs[0].shape[0])
        if k >= largest or k < (1.0 - max_waste) * largest:
            largest = max(largest, k)
            return fn(*xs)
        pad = largest - k
        padded = [keras.ops.pad(x, [(0, pad)] + [(0, 0)] * (len(x.shape) - 1)) for x in xs]
        return keras.tree.map_structure(lambda out: out[:k], fn(*padded))

    return call


def first_call_per_shape_as_compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose first call per input shape counts as compilation in a profile (``imagegen.profiling``)."""
    seen: set[tuple[tuple[int, ...], ...]] = set()

    def call(*xs: Any) -> Any:
        shapes = tuple(tuple(getattr(x, "shape", ())) for x in xs)
        if shapes in seen:
            return fn(*xs)
        seen.add(shapes)
        with phase("predict.first_call_per_shape", "compile"):
            return fn(*xs)

    return call


def _compiled(model: keras.Model) -> Callable[..., Any]:
    backend = keras.backend.backend()
    single = len(model.inputs) == 1

    def pack(inputs: tuple[Any, ...]) -> Any:
        return inputs[0] if single else list(inputs)

    if backend == "tensorflow":
        import tensorflow as tf

        from imagegen.training.branches import branches_for, cpu_branches, split_rows
        from imagegen.training.precision import resolve_jit

        jit = resolve_jit("auto", backend)  # XLA on a GPU; on a CPU its compile per shape costs more than it saves
        branches = 1 if jit else cpu_branches()

        # One traced call that every equal shard runs (traced once, not once per branch).
        shard_fn = tf.function(lambda *part: model(pack(part), training=False), reduce_retracing=True)

        def predict(*xs: Any) -> Any:  # rows in side-by-side shards on a CPU (imagegen.training.branches)
            shards = branches_for(xs[0].shape[0], branches)
            if shards == 1:
                return model(pack(xs), training=False)
            return split_rows(shard_fn, xs, shards)

        fn = tf.function(predict, jit_compile=jit, reduce_retracing=True)
        return lambda *xs: fn(*xs)
    if backend == "jax":
        import jax

        @jax.jit
        def fn(trainable: Any, non_trainable: Any, xs: tuple[Any, ...]) -> Any:
            out, _ = model.stateless_call(trainable, non_trainable, pack(xs), training=False)
            return out

        def call(*xs: Any) -> Any:
            trainable = [v.value for v in model.trainable_variables]
            non_trainable = [v.value for v in model.non_trainable_variables]
            return fn(trainable, non_trainable, tuple(xs))

        return call
    return lambda *xs: model(pack(xs), training=False)
