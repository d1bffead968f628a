"""Data parallelism on JAX's SPMD sharding: one mesh axis ``batch`` over the training devices.

Parameters, non-trainable state and optimiser variables are *replicated* on every device; each batch is
split along its first axis. ``jax.jit`` compiles the step once for the whole mesh and inserts the
all-reduce of the gradients (and of BatchNorm's batch statistics, which stay global-batch statistics),
so the program means the same as on one device: only the order of float additions changes.

Multi-host: every process runs the same program; :func:`initialize_multihost` calls
``jax.distributed.initialize`` from three environment variables (below), the mesh then spans every
process's devices, each process feeds only its own rows of each global batch, and only process 0 writes
files (checkpoints, models, reports).

Nothing here is global state: a :class:`DataParallel` is made per stepper and holds its mesh.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagegen.errors import ConfigError

# Multi-host settings (the first is also the name jax.distributed itself reads).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0, reachable by every process
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"  # how many processes (usually one per host)
ENV_PROCESS_ID = "JAX_PROCESS_ID"  # this process's index, 0 .. JAX_NUM_PROCESSES - 1
BATCH_AXIS = "batch"


def multihost_settings(env: Mapping[str, str]) -> tuple[str, int, int] | None:
    """``(coordinator, num_processes, process_id)`` from ``env``, or None when no multi-host run is asked for."""
    names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
    given = {n: env[n] for n in names if env.get(n)}
    if not given or set(given) == {ENV_COORDINATOR}:
        return None  # JAX_COORDINATOR_ADDRESS alone: jax's own cluster auto-detection, not ours to start
    if len(given) != len(names):
        missing = ", ".join(n for n in names if n not in given)
        raise ConfigError(f"multi-host training needs {', '.join(names)}; missing {missing}")
    try:
        count, index = int(given[ENV_NUM_PROCESSES]), int(given[ENV_PROCESS_ID])
    except ValueError:
        raise ConfigError(
            f"{ENV_NUM_PROCESSES}={given[ENV_NUM_PROCESSES]!r}, {ENV_PROCESS_ID}={given[ENV_PROCESS_ID]!r}: "
            "expected integers"
        ) from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"{ENV_PROCESS_ID}={index} with {ENV_NUM_PROCESSES}={count}: expected 0 <= id < count")
    return given[ENV_COORDINATOR], count, index


def initialize_multihost(env: Mapping[str, str] | None = None) -> bool:
    """Join the multi-host run described by the environment (before any JAX computation); True if joined.

    A no-op returning False without the variables, on another Keras backend, or when already joined.
    """
    settings = multihost_settings(os.environ if env is None else env)
    if settings is None:
        return False
    import keras

    if keras.backend.backend() != "jax":
        raise ConfigError(f"{ENV_COORDINATOR} is set: multi-host training needs KERAS_BACKEND=jax")
    import jax

    if not jax.distributed.is_initialized():
        coordinator, count, index = settings
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=count, process_id=index)
    return True


def is_writer() -> bool:
    """True in the process that writes files: process 0 of a multi-host JAX run, else always."""
    import keras

    if keras.backend.backend() != "jax":
        return True
    import jax

    return jax.process_index() == 0


def resolve_devices(requested: str | int, batch_size: int, backend: str) -> int:
    """The number of devices per process to train on; a :class:`ConfigError` when it cannot work.

    ``auto`` is every local accelerator on JAX (on a CPU-only host the devices jax reports) and 1 on
    TensorFlow, which trains on one device only.
    """
    if backend != "jax":
        if requested != "auto" and int(requested) > 1:
            raise ConfigError(
                f"train.devices = {requested}: data-parallel training needs the JAX backend "
                f"(KERAS_BACKEND=jax); the {backend} backend trains on one device (use train.devices=1 or auto)"
            )
        return 1
    import jax

    local = jax.local_device_count()
    n = local if requested == "auto" else int(requested)
    if n > local:
        raise ConfigError(f"train.devices = {n}: this process sees only {local} {jax.default_backend()} device(s)")
    total = n * jax.process_count()
    if batch_size % total:
        raise ConfigError(
            f"train.batch_size = {batch_size} does not divide over {total} devices "
            f"(train.devices = {requested!r} x {jax.process_count()} process(es)): "
            f"use a batch size that is a multiple of {total} (<family>.batch_size when it is set for the family, "
            "distill.batch_size for a distillation), or set train.devices"
        )
    return n


@dataclass
class DataParallel:
    """The mesh, its two shardings, and this process's rows of each global batch."""

    mesh: Any
    replicated: Any  # NamedSharding: every device holds the whole value
    split: Any  # NamedSharding: first axis split over the batch axis
    batch_size: int  # global
    rows: slice  # this process's rows of a global batch

    @classmethod
    def create(cls, devices_per_process: int, batch_size: int) -> DataParallel:
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        count = jax.process_count()
        devices = [
            d for p in range(count) for d in [x for x in jax.devices() if x.process_index == p][:devices_per_process]
        ]
        mesh = Mesh(np.array(devices), (BATCH_AXIS,))
        local = batch_size // count
        index = jax.process_index()
        return cls(
            mesh=mesh,
            replicated=NamedSharding(mesh, PartitionSpec()),
            split=NamedSharding(mesh, PartitionSpec(BATCH_AXIS)),
            batch_size=batch_size,
            rows=slice(index * local, (index + 1) * local),
        )

    @property
    def multiprocess(self) -> bool:
        import jax

        return jax.process_count() > 1

    def replicate(self, tree: Any) -> Any:
        import jax

        if not self.multiprocess:
            return jax.device_put(tree, self.replicated)
        # Every process holds the same host values (same seed, same checkpoint): each places its copy.
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

    def shard_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Place a host batch on the mesh: arrays of the global batch length are split, others replicated.

        In a multi-host run an array may hold the whole global batch (then this process's rows are taken)
        or only this process's rows (a sharded :class:`~imagegen.data.loader.BatchStream` reads no more).
        """
        import jax

        local = self.rows.stop - self.rows.start
        out = {}
        for key, value in batch.items():
            value = np.asarray(value)
            if value.ndim == 0 or value.shape[0] not in (self.batch_size, local):
                out[key] = self.replicate(value)
            elif not self.multiprocess:
                out[key] = jax.device_put(value, self.split)
            else:
                mine = value[self.rows] if value.shape[0] == self.batch_size else value
                out[key] = jax.make_array_from_process_local_data(self.split, mine, (self.batch_size, *value.shape[1:]))
        return out


def follower_outputs(params: Any, family_name: str) -> tuple[Any, Any]:
    """For a process other than 0: a private scratch model folder and params writing only there.

    Every process runs the whole stage (the SPMD program needs them all); only process 0's files count,
    so the others' reports and model folder go to a temporary folder and tracking is off. Checkpoints stay
    where they are (a folder every host sees): the others read them on ``--resume`` and never write them.
    """
    import tempfile
    from pathlib import Path

    scratch = Path(tempfile.mkdtemp(prefix="imagegen-follower-"))
    train = params.train.model_copy(update={"reports_dir": scratch / "reports", "models_dir": scratch / "models"})
    tracking = params.tracking.model_copy(update={"enabled": False})
    return scratch / "models" / family_name, params.model_copy(update={"train": train, "tracking": tracking})
