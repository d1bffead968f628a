"""The train step on the TensorFlow backend: GradientTape inside one (optionally XLA-compiled) tf.function."""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
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

    def __init__(
        self,
        family: Family,
        jit_compile: bool = True,
        branches: int | None = None,
        bf16_filter_gradients: bool | None = None,
    ) -> None:
        self.family = family
        if branches is None:
            branches = cpu_branches() if family.batch_separable and not jit_compile else 1
        self.branches = branches
        if bf16_filter_gradients is None:  # with the rest of the convolutions' math: train.cpu_math
            from imagegen.training.precision import cpu_math_in_effect

            bf16_filter_gradients = not jit_compile and cpu_math_in_effect() == "bf16"
        self.bf16_filter_gradients = bf16_filter_gradients
        self._shard_fns: dict[str, Any] = {}
        for phase in family.phases:
            phase.optimizer.build(self._phase_vars(phase))
            use_fused_adam(phase.optimizer)
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
        # Runs while the step is traced: the graph's convolutions are built here.
        with bf16_filter_gradients(self.bf16_filter_gradients):
            return self._traced_step(batch)

    def _traced_step(self, batch: Mapping[str, Any]) -> dict[str, Any]:
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


def use_fused_adam(optimizer: Any) -> bool:
    """Have a plain Keras ``Adam`` update each variable with TensorFlow's fused Adam kernel; whether it does.

    Why: Keras writes Adam's update as about twenty-five small TensorFlow ops per variable (casts, the bias
    correction, the two moments, the step), and TensorFlow's executor spends a few microseconds on each; a
    U-Net of a hundred-odd variables then spends a quarter of its CPU train step's ops on the update (the LDM's).
    ``ResourceApplyAdam`` is one op per variable computing the same update (Kingma & Ba with Keras' bias
    correction, ``lr sqrt(1 - beta_2^t) / (1 - beta_1^t)``, epsilon outside the square root): the LDM's step
    about 9% faster, StyleGAN2's 3% (``docs/design.md``). The kernel forms ``1 - beta`` in float32 where Keras
    rounds it from Python's float64, so the weights agree with Keras' update to float32 rounding, not bit for bit.

    Only the per-variable update changes: clipping, weight decay, the update count and EMA stay Keras' own
    (``Optimizer.apply`` calls this hook, ``_backend_update_step``, for the update alone). Other optimizers, AMSGrad
    and variables that are not float32 keep Keras' update.
    """
    if type(optimizer) is not keras.optimizers.Adam or optimizer.amsgrad:
        return False
    optimizer._backend_update_step = types.MethodType(_fused_adam_update, optimizer)
    return True


def _fused_adam_update(
    optimizer: keras.optimizers.Adam, grads: Sequence[Any], variables: Sequence[Any], learning_rate: Any
) -> None:
    """Keras' ``_backend_update_step`` for :func:`use_fused_adam`: the step's scalars once, then one kernel per
    variable."""
    f32 = tf.float32
    step = tf.cast(optimizer.iterations + 1, f32)
    beta_1, beta_2 = tf.cast(optimizer.beta_1, f32), tf.cast(optimizer.beta_2, f32)
    scalars = {
        "lr": tf.cast(learning_rate, f32),
        "beta1": beta_1,
        "beta2": beta_2,
        "beta1_power": tf.pow(beta_1, step),
        "beta2_power": tf.pow(beta_2, step),
        "epsilon": tf.cast(optimizer.epsilon, f32),
    }
    for grad, variable in zip(grads, variables, strict=True):
        if variable.dtype != "float32":
            optimizer.update_step(grad, variable, learning_rate)
            continue
        index = optimizer._get_variable_index(variable)
        value = variable.value if isinstance(variable, keras.Variable) else variable
        tf.raw_ops.ResourceApplyAdam(
            var=value.handle,
            m=optimizer._momentums[index].value.handle,
            v=optimizer._velocities[index].value.handle,
            grad=tf.cast(grad, f32),
            **scalars,
        )


@contextlib.contextmanager
def bf16_filter_gradients(enabled: bool = True) -> Iterator[None]:
    """Within the block, the 2-D convolutions Keras builds on TensorFlow compute their kernel's gradient in bfloat16.

    Why: with oneDNN's bfloat16 math mode (``train.cpu_math``, :func:`imagegen.startup.cpu_math_requested`)
    TensorFlow 2.20 computes a convolution and its input gradient in bfloat16 but its kernel gradient
    (``Conv2DBackpropFilter``) in float32: the largest kernel of a U-Net's CPU train step. Given bfloat16
    operands the same kernel runs on AMX tiles, several times faster (``docs/design.md``). The operands are
    rounded to bfloat16 as the math mode rounds the other convolutions' and the products summed in float32;
    the sum is then rounded to bfloat16 (8 bits of mantissa) before it becomes the float32 gradient, as under
    PyTorch's bfloat16 autocast, whose convolutions return bfloat16 weight gradients too. The forward and the
    input gradient are unchanged, and so are second-order gradients' other terms (StyleGAN2's R1 penalty).

    Keras calls its backend's ``conv`` for every convolution (``Conv2D`` layers and ``keras.ops.conv``), so the
    block routes that one function, while the step is traced, through :func:`_conv_with_bf16_filter_gradient`;
    convolutions it does not cover (not 2-D, channels first, grouped, dilated, not float32) and those where
    bfloat16 does not pay (:func:`_pays_in_bf16`: narrow layers, 1x1 kernels) keep TensorFlow's.
    """
    if not enabled:
        yield
        return
    from keras.src.backend.tensorflow import nn as tf_nn

    original = tf_nn.conv
    tf_nn.conv = functools.partial(_conv_with_bf16_filter_gradient, original)
    try:
        yield
    finally:
        tf_nn.conv = original


def _conv_with_bf16_filter_gradient(
    original: Any,
    inputs: Any,
    kernel: Any,
    strides: Any = 1,
    padding: str = "valid",
    data_format: str | None = None,
    dilation_rate: Any = 1,
) -> Any:
    """Keras' TensorFlow ``conv`` (``original``) with the kernel's gradient from bfloat16 operands."""
    args = (strides, padding, data_format, dilation_rate)
    data_format = data_format or keras.config.image_data_format()
    rank4 = len(inputs.shape) == 4 and len(kernel.shape) == 4
    if (
        not rank4
        or data_format != "channels_last"
        or inputs.shape[-1] != kernel.shape[-2]
        or _pair(dilation_rate) != (1, 1)
        or inputs.dtype != tf.float32
        or kernel.dtype != tf.float32
        or not _pays_in_bf16(kernel.shape)
    ):
        return original(inputs, kernel, *args)
    rows, cols = _pair(strides)
    attrs = {"strides": [1, rows, cols, 1], "padding": padding.upper(), "data_format": "NHWC"}

    @tf.custom_gradient
    def conv(x: tf.Tensor, k: tf.Tensor) -> Any:
        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=k, out_backprop=dy, **attrs)
            bf16 = tf.bfloat16
            dk = tf.raw_ops.Conv2DBackpropFilter(
                input=tf.cast(x, bf16), filter_sizes=tf.shape(k), out_backprop=tf.cast(dy, bf16), **attrs
            )
            return dx, tf.cast(dk, k.dtype)

        return original(x, k, *args), grad

    return conv(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))


MIN_BF16_CHANNELS = 32
"""Kernels with fewer input or output channels than this keep the float32 gradient (see :func:`_pays_in_bf16`)."""


def _pays_in_bf16(kernel_shape: Any) -> bool:
    """Whether a kernel's gradient is faster from bfloat16 operands once the casts are paid for: a spatial
    kernel (not 1x1) with at least :data:`MIN_BF16_CHANNELS` channels in and out. AMX multiplies bfloat16 tiles
    of 32 along the reduced axis, so narrower layers gain little, and a 1x1 kernel's gradient is cheap either way;
    measured per shape, single-threaded, on a Xeon with AMX (``docs/design.md``)."""
    rows, cols, channels_in, channels_out = (int(d) for d in kernel_shape)
    return rows * cols > 1 and min(channels_in, channels_out) >= MIN_BF16_CHANNELS


def _pair(value: Any) -> tuple[int, int]:
    """A Keras stride or dilation (an int or a pair) as a pair."""
    if isinstance(value, int):
        return value, value
    first, second = tuple(value)
    return int(first), int(second)
