"""The train step on the TensorFlow backend: GradientTape inside one (optionally XLA-compiled) tf.function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from imagegen.training.branches import branches_for, cpu_branches, split_mean
from imagegen.training.families.base import Family


class TensorFlowStepper:
    """Runs every phase of a family, then its EMA updates, as one compiled function per step.

    One device only: ``train.devices`` > 1 is refused before this is built
    (:func:`imagegen.training.distributed.resolve_devices`); data-parallel training is on the JAX backend.
    On a CPU the loss of a ``batch_separable`` family is computed in row shards that run side by side
    (:mod:`imagegen.training.branches`); ``branches`` overrides their count (1: whole batches).
    """

    local_rows = None  # single process: the stream reads every row

    def __init__(self, family: Family, jit_compile: bool = True, branches: int | None = None) -> None:
        self.family = family
        if branches is None:
            branches = cpu_branches() if family.batch_separable and not jit_compile else 1
        self.branches = branches
        self._shard_fns: dict[str, Any] = {}
        for phase in family.phases:
            phase.optimizer.build(self._phase_vars(phase))
        self._step_fn = tf.function(self._step, jit_compile=jit_compile, reduce_retracing=True, autograph=False)

    def _phase_vars(self, phase: Any) -> list[Any]:
        return [v for name in phase.trains for v in self.family.networks[name].trainable_variables]

    def _call(self, name: str, inputs: Any, training: bool = True) -> Any:
        net = self.family.views[name][1] if name in self.family.views else self.family.networks[name]
        return net(inputs, training=training)

    def _shard_loss(self, phase: Any) -> Any:
        """The phase's loss as one traced function that every equal shard calls: the graph of a shard is
        traced (and differentiated) once, not once per branch."""
        if phase.name not in self._shard_fns:

            def shard_loss(batch: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
                return phase.loss(self._call, batch)

            self._shard_fns[phase.name] = tf.function(shard_loss, reduce_retracing=True, autograph=False)
        return self._shard_fns[phase.name]

    def _step(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        # Static while batches keep one size, as training's do (a relaxed retrace sees None: no split).
        rows = next((v.shape[0] for v in batch.values() if len(v.shape)), None)
        branches = branches_for(rows, self.branches)
        for phase in self.family.phases:
            variables = self._phase_vars(phase)
            shard_loss = self._shard_loss(phase) if branches > 1 else (lambda b, p=phase: p.loss(self._call, b))
            with tf.GradientTape() as tape:
                loss, phase_metrics = split_mean(shard_loss, batch, branches)
                loss = tf.cast(loss, tf.float32)
            grads = tape.gradient(loss, variables)
            phase.optimizer.apply(grads, variables)
            metrics.update(phase_metrics)
        decay = self.family.ema_decay_at(self.family.phases[0].optimizer.iterations)
        for ema_name, src_name in self.family.ema.items():
            ema, src = self.family.networks[ema_name], self.family.networks[src_name]
            for e, v in zip(ema.trainable_variables, src.trainable_variables, strict=True):
                e.assign(decay * e + (1.0 - decay) * v)
            for e, v in zip(ema.non_trainable_variables, src.non_trainable_variables, strict=True):
                e.assign(v)
        return {k: tf.cast(v, tf.float32) for k, v in metrics.items()}

    def step(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return self._step_fn(dict(batch))

    def pull(self) -> None:
        """Variables are the state on this backend: nothing to read."""

    def push(self) -> None:
        """Variables are the state on this backend: nothing to write."""
