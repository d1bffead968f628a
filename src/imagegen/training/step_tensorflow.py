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
        bf16_convolutions: bool | None = None,
    ) -> None:
        self.family = family
        if branches is None:
            branches = cpu_branches() if family.batch_separable and not jit_compile else 1
        self.branches = branches
        if bf16_convolutions is None:  # with the rest of the convolutions' math: train.cpu_math
            from imagegen.training.precision import cpu_math_in_effect

            bf16_convolutions = not jit_compile and cpu_math_in_effect() == "bf16"
        self.bf16_convolutions = bf16_convolutions
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
        with bf16_convolutions(self.bf16_convolutions):
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
def bf16_convolutions(enabled: bool = True) -> Iterator[None]:
    """Within the block, the 2-D convolutions Keras builds on TensorFlow compute in bfloat16 where oneDNN's
    bfloat16 math mode leaves them in float32.

    Why: with the math mode on (``train.cpu_math``, :func:`imagegen.startup.cpu_math_requested`) TensorFlow 2.20
    computes a stride-1 convolution and its input gradient in bfloat16, but the kernel gradient of every
    convolution (``Conv2DBackpropFilter``), strided convolutions and transposed convolutions
    (``Conv2DBackpropInput``) stay float32 whatever the mode: the kernel gradients were the largest kernels of a
    U-Net's CPU train step, the transposed and strided convolutions most of a DCGAN's or a VAE's. Given bfloat16
    operands the same kernels run on AMX tiles, about twice as fast (``docs/design.md``). The block computes each
    of those from operands rounded to bfloat16 (as the math mode rounds the others'), products summed in float32;
    unlike the math mode's float32 result, the sum is then rounded to bfloat16 before it becomes float32 again,
    as under PyTorch's bfloat16 autocast, whose convolutions return bfloat16 outputs and weight gradients too.
    What the math mode already covers (a stride-1 convolution and its input gradient) stays TensorFlow's; the
    gradients of the rounded ops are the ops' own, so second-order gradients (StyleGAN2's R1 penalty) flow.

    Keras calls its backend's ``conv`` and ``conv_transpose`` for every convolution (``Conv2D`` and
    ``Conv2DTranspose`` layers, ``keras.ops.conv``), so the block routes those two functions while the step is
    traced (:func:`_conv_in_bf16`, :func:`_conv_transpose_in_bf16`); convolutions it does not cover (not 2-D,
    channels first, grouped, dilated, with output padding, not float32) and those where bfloat16 does not pay
    (:func:`_pays_in_bf16`: narrow layers, 1x1 kernels) keep TensorFlow's.
    """
    if not enabled:
        yield
        return
    from keras.src.backend.tensorflow import nn as tf_nn

    conv, conv_transpose = tf_nn.conv, tf_nn.conv_transpose
    tf_nn.conv = functools.partial(_conv_in_bf16, conv)
    tf_nn.conv_transpose = functools.partial(_conv_transpose_in_bf16, conv_transpose)
    try:
        yield
    finally:
        tf_nn.conv, tf_nn.conv_transpose = conv, conv_transpose


def _covered(inputs: Any, kernel: Any, data_format: str | None, dilation_rate: Any, channels_in: Any) -> bool:
    """Whether a Keras convolution is one :func:`bf16_convolutions` computes: 2-D, channels last, float32,
    undilated, ungrouped (``channels_in``: the kernel's input-channel count) and wide enough to pay."""
    return (
        len(inputs.shape) == 4
        and len(kernel.shape) == 4
        and (data_format or keras.config.image_data_format()) == "channels_last"
        and inputs.shape[-1] == channels_in
        and _pair(dilation_rate) == (1, 1)
        and inputs.dtype == tf.float32
        and kernel.dtype == tf.float32
        and _pays_in_bf16(kernel.shape)
    )


def _in_bf16(op: Any, attrs: dict[str, Any], *, bf16: bool = True, **tensors: Any) -> tf.Tensor:
    """``op`` (with ``attrs``) on the float32 ``tensors`` rounded to bfloat16 (float32 again after), or as they
    are; int32 tensors (shapes) pass as they are."""
    if not bf16:
        return op(**tensors, **attrs)
    rounded = {k: v if v.dtype == tf.int32 else tf.cast(v, tf.bfloat16) for k, v in tensors.items()}
    return tf.cast(op(**rounded, **attrs), tf.float32)


def _conv_in_bf16(
    original: Any,
    inputs: Any,
    kernel: Any,
    strides: Any = 1,
    padding: str = "valid",
    data_format: str | None = None,
    dilation_rate: Any = 1,
) -> Any:
    """Keras' TensorFlow ``conv`` (``original``) with its kernel gradient, and for a strided convolution also its
    forward and input gradient, from bfloat16 operands."""
    if not _covered(inputs, kernel, data_format, dilation_rate, kernel.shape[-2]):
        return original(inputs, kernel, strides, padding, data_format, dilation_rate)
    rows, cols = _pair(strides)
    attrs = {"strides": [1, rows, cols, 1], "padding": padding.upper(), "data_format": "NHWC"}
    strided = (rows, cols) != (1, 1)  # the math mode computes stride 1 (forward and input gradient) itself

    @tf.custom_gradient
    def conv(x: tf.Tensor, k: tf.Tensor) -> Any:
        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            backprop_input = tf.raw_ops.Conv2DBackpropInput
            dx = _in_bf16(backprop_input, attrs, bf16=strided, input_sizes=tf.shape(x), filter=k, out_backprop=dy)
            dk = _in_bf16(tf.raw_ops.Conv2DBackpropFilter, attrs, input=x, filter_sizes=tf.shape(k), out_backprop=dy)
            return dx, dk

        if not strided:
            return original(x, k, strides, padding, data_format, dilation_rate), grad
        return _in_bf16(tf.raw_ops.Conv2D, attrs, input=x, filter=k), grad

    return conv(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))


def _conv_transpose_in_bf16(
    original: Any,
    inputs: Any,
    kernel: Any,
    strides: Any = 1,
    padding: str = "valid",
    output_padding: Any = None,
    data_format: str | None = None,
    dilation_rate: Any = 1,
) -> Any:
    """Keras' TensorFlow ``conv_transpose`` (``original``) with its forward and both gradients from bfloat16
    operands: the forward is a convolution's input gradient, the input gradient a convolution."""
    if output_padding is not None or not _covered(inputs, kernel, data_format, dilation_rate, kernel.shape[-1]):
        return original(inputs, kernel, strides, padding, output_padding, data_format, dilation_rate)
    from keras.src.backend.common.backend_utils import compute_conv_transpose_output_shape

    rows, cols = _pair(strides)
    attrs = {"strides": [1, rows, cols, 1], "padding": padding.upper(), "data_format": "NHWC"}
    x = tf.convert_to_tensor(inputs)
    shape = [tf.shape(x)[i] if d is None else d for i, d in enumerate(x.shape)]
    out_shape = compute_conv_transpose_output_shape(
        shape, kernel.shape[:-2], kernel.shape[-2], strides, padding, None, "channels_last", dilation_rate
    )

    @tf.custom_gradient
    def conv_transpose(x: tf.Tensor, k: tf.Tensor) -> Any:
        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            dx = _in_bf16(tf.raw_ops.Conv2D, attrs, input=dy, filter=k)
            dk = _in_bf16(tf.raw_ops.Conv2DBackpropFilter, attrs, input=dy, filter_sizes=tf.shape(k), out_backprop=x)
            return dx, dk

        sizes = tf.convert_to_tensor(out_shape, tf.int32)
        return _in_bf16(tf.raw_ops.Conv2DBackpropInput, attrs, input_sizes=sizes, filter=k, out_backprop=x), grad

    return conv_transpose(x, tf.convert_to_tensor(kernel))


MIN_BF16_CHANNELS = 32
"""Kernels with fewer input or output channels than this keep float32 (see :func:`_pays_in_bf16`)."""


def _pays_in_bf16(kernel_shape: Any) -> bool:
    """Whether a convolution is faster from bfloat16 operands once the casts are paid for: a spatial kernel (not
    1x1) with at least :data:`MIN_BF16_CHANNELS` channels in and out. AMX multiplies bfloat16 tiles of 32 along
    the reduced axis, so narrower layers gain little, and a 1x1 kernel's gradient is cheap either way; measured per
    shape, single-threaded, on a Xeon with AMX (``docs/design.md``)."""
    rows, cols, channels_in, channels_out = (int(d) for d in kernel_shape)
    return rows * cols > 1 and min(channels_in, channels_out) >= MIN_BF16_CHANNELS


def _pair(value: Any) -> tuple[int, int]:
    """A Keras stride or dilation (an int or a pair) as a pair."""
    if isinstance(value, int):
        return value, value
    first, second = tuple(value)
    return int(first), int(second)
