"""What a model family gives the training loop: its networks, its optimisation phases and host-side noise.

A *phase* is one optimiser update: a loss written in ``keras.ops`` over a ``call(name, inputs)`` function,
and the networks whose trainable weights it updates (a GAN has two phases, D then G; a VAE or DDPM one).
The loss never touches variables directly, so the same loss runs under TensorFlow's GradientTape and
under JAX's ``stateless_call`` + ``value_and_grad``.

All randomness a step needs (latents, diffusion noise and timesteps) is drawn on the host from a numpy
Generator and passed in the batch: identical on every backend, and checkpointed as one small state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

# call(model_name, inputs, training=True) -> outputs
Caller = Callable[..., Any]
# loss(call, batch) -> (scalar loss to minimise, {metric name: scalar})
LossFn = Callable[[Caller, Mapping[str, Any]], tuple[Any, dict[str, Any]]]


@dataclass
class Phase:
    name: str
    trains: tuple[str, ...]  # networks whose trainable weights this phase updates
    loss: LossFn
    optimizer: keras.optimizers.Optimizer


@dataclass
class Family:
    """A model family instantiated for one dataset shape; see the module docstring."""

    name: str
    networks: dict[str, keras.Model]
    phases: list[Phase]
    noise: Callable[[np.random.Generator, np.ndarray], dict[str, np.ndarray]]
    # EMA copies: {ema network name: source network name}; updated after every step.
    ema: dict[str, str] = field(default_factory=dict)
    ema_decay: float = 0.999
    # The config section (JSON) that rebuilds these networks, plus the data shape.
    spec: dict[str, Any] = field(default_factory=dict)
    # Every phase's loss (and metric) is the batch mean of per-image terms and no network uses batch statistics:
    # the loss of a batch is then the row-weighted mean of its shards' losses, so a CPU step may compute it in
    # row shards side by side (imagegen.training.branches). False for BatchNorm networks or batch-level terms.
    batch_separable: bool = False
    # Other outputs of a network for the losses: {view name: (network name, model)}, where the model is built
    # from that network's own layers (so the same variables, in the same order) and returns an inner tensor,
    # e.g. the VAE decoder's logits before its output activation. ``call(view name, inputs)`` runs it with the
    # network's weights; a view is never saved, counted or updated on its own.
    views: dict[str, tuple[str, keras.Model]] = field(default_factory=dict)
    # Host-side state the family keeps between steps (ADA's augmentation probability, a lazy regulariser's step
    # count): JSON values that ``noise`` may read, checkpointed with the loop state so a resume continues exactly.
    host_state: dict[str, Any] = field(default_factory=dict)
    # adapt(metrics) -> {name: value}: called by the loop after every step with that step's metrics (device
    # scalars); it may update ``host_state`` and returns host values to log with the step's metrics.
    adapt: Callable[[Mapping[str, Any]], dict[str, float]] | None = None

    def ema_decay_at(self, updates: Any) -> Any:
        """EMA decay with warm-up, min(decay, (1 + n) / (10 + n)) after n updates (as tf.train.ExponentialMovingAverage
        with num_updates): early averages follow the fast-moving weights instead of staying near the initialisation."""
        n = keras.ops.cast(updates, "float32")
        return keras.ops.minimum(self.ema_decay, (1.0 + n) / (10.0 + n))

    def labels_for(self, labels: np.ndarray | None, n: int) -> np.ndarray:
        """int32 class labels for ``n`` conditional samples: ``labels`` as given, else cycling over the classes."""
        if labels is not None:
            return np.asarray(labels, dtype=np.int32)
        return (np.arange(n) % self.spec["num_classes"]).astype(np.int32)

    def trainable_count(self) -> int:
        return sum(
            int(np.prod(v.shape)) for n, m in self.networks.items() if n not in self.ema for v in m.trainable_weights
        )
