"""The train step on the JAX backend: ``stateless_call`` + ``jax.value_and_grad`` + ``jax.jit``.

The step is a pure function of (state, batch) -> (state, metrics); the state holds every network's
trainable and non-trainable values and every optimiser's variables. ``pull``/``push`` move it between
the Keras variables (for checkpoints, sampling, saving) and the jitted loop.

Data-parallel over several devices (``devices > 1``, or several processes): ``pull`` replicates the
state over a :class:`~imagegen.training.distributed.DataParallel` mesh, ``step`` splits each batch along
its first axis, and the same ``jax.jit`` program, given those shardings, runs SPMD with XLA inserting the
gradient all-reduce. ``push`` writes the (replicated) values back to the Keras variables, so checkpoints
do not depend on the device count: one written on 4 devices resumes on 1 and the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from imagegen.training.distributed import DataParallel
from imagegen.training.families.base import Family, Phase


class JaxStepper:
    def __init__(self, family: Family, jit_compile: bool = True, parallel: DataParallel | None = None) -> None:
        self.family = family
        self.parallel = parallel
        # This process's rows of each global batch (multi-host), for a stream that reads only those.
        self.local_rows = parallel.rows if parallel is not None and parallel.multiprocess else None
        for phase in family.phases:
            phase.optimizer.build(self._phase_vars(phase))
        first = family.phases[0].optimizer
        # Position of the first optimiser's update counter in its variables (drives the EMA warm-up).
        self._iterations_index = next(i for i, v in enumerate(first.variables) if v is first.iterations)
        self.state: dict[str, Any] = {}
        if not jit_compile:
            self._step_fn = self._step  # op by op; on a mesh each op still runs SPMD on sharded arrays
        elif parallel is None:
            self._step_fn = jax.jit(self._step, donate_argnums=0)
        else:
            # Inputs arrive placed (state replicated by pull, batch split by shard_batch); outputs are
            # pinned replicated so the state keeps its sharding from step to step.
            rep = parallel.replicated
            self._step_fn = jax.jit(self._step, donate_argnums=0, out_shardings=(rep, rep))
        self.pull()

    def _phase_vars(self, phase: Phase) -> list[Any]:
        return [v for name in phase.trains for v in self.family.networks[name].trainable_variables]

    def pull(self) -> None:
        nets = self.family.networks
        self.state = {
            "trainable": {n: [v.value for v in m.trainable_variables] for n, m in nets.items()},
            "non_trainable": {n: [v.value for v in m.non_trainable_variables] for n, m in nets.items()},
            "opt": {p.name: [v.value for v in p.optimizer.variables] for p in self.family.phases},
        }
        if self.parallel is not None:
            self.state = self.parallel.replicate(self.state)

    def push(self) -> None:
        # On a mesh, copy to the host first: the Keras variables then live on the default device as on
        # one device, so sampling and saving never mix arrays placed on different device sets.
        place = (lambda x: x) if self.parallel is None else np.asarray
        for n, m in self.family.networks.items():
            for v, val in zip(m.trainable_variables, self.state["trainable"][n], strict=True):
                v.assign(place(val))
            for v, val in zip(m.non_trainable_variables, self.state["non_trainable"][n], strict=True):
                v.assign(place(val))
        for p in self.family.phases:
            for v, val in zip(p.optimizer.variables, self.state["opt"][p.name], strict=True):
                v.assign(place(val))

    def _phase(self, phase: Phase, state: dict[str, Any], batch: Mapping[str, Any]) -> tuple[dict, dict]:
        nets = self.family.networks

        def loss_fn(train_sub: dict[str, list[Any]]) -> tuple[Any, tuple[dict, dict]]:
            non_trainable = dict(state["non_trainable"])

            def call(name: str, inputs: Any, training: bool = True) -> Any:
                # a view runs its network's variables through the model that returns the inner tensor
                name, net = self.family.views[name] if name in self.family.views else (name, nets[name])
                values = train_sub[name] if name in train_sub else state["trainable"][name]
                out, non_trainable[name] = net.stateless_call(values, non_trainable[name], inputs, training=training)
                return out

            loss, metrics = phase.loss(call, batch)
            return loss.astype("float32"), (metrics, non_trainable)

        train_sub = {n: state["trainable"][n] for n in phase.trains}
        (_, (metrics, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_sub)
        flat_vars = [v for n in phase.trains for v in train_sub[n]]
        flat_grads = [g for n in phase.trains for g in grads[n]]
        new_vars, new_opt = phase.optimizer.stateless_apply(state["opt"][phase.name], flat_grads, flat_vars)
        trainable = dict(state["trainable"])
        i = 0
        for n in phase.trains:
            k = len(train_sub[n])
            trainable[n] = list(new_vars[i : i + k])
            i += k
        opt = dict(state["opt"])
        opt[phase.name] = list(new_opt)
        return {"trainable": trainable, "non_trainable": non_trainable, "opt": opt}, metrics

    def _step(self, state: dict[str, Any], batch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        metrics: dict[str, Any] = {}
        for phase in self.family.phases:
            state, phase_metrics = self._phase(phase, state, batch)
            metrics.update(phase_metrics)
        if self.family.ema:
            decay = self.family.ema_decay_at(state["opt"][self.family.phases[0].name][self._iterations_index])
            trainable = dict(state["trainable"])
            non_trainable = dict(state["non_trainable"])
            for ema_name, src_name in self.family.ema.items():
                trainable[ema_name] = [
                    decay * e + (1.0 - decay) * v for e, v in zip(trainable[ema_name], trainable[src_name], strict=True)
                ]
                non_trainable[ema_name] = list(non_trainable[src_name])
            state = {**state, "trainable": trainable, "non_trainable": non_trainable}
        return state, {k: v.astype("float32") for k, v in metrics.items()}

    def step(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        feed = dict(batch) if self.parallel is None else self.parallel.shard_batch(batch)
        self.state, metrics = self._step_fn(self.state, feed)
        return metrics
