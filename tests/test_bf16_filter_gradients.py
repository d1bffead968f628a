"""With bfloat16 CPU math, the TensorFlow train step computes its convolutions' kernel gradients in bfloat16:
the same forward and input gradient, the kernel gradient to bfloat16 rounding, second-order gradients intact."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("the bfloat16 kernel gradient belongs to the TensorFlow backend", allow_module_level=True)

from keras.src.backend.tensorflow import nn as tf_nn  # noqa: E402

from imagegen.training.step_tensorflow import bf16_filter_gradients  # noqa: E402

BF16_EPS = 2.0**-8  # bfloat16's relative rounding step


def _conv_model(seed: int = 0) -> keras.Model:
    """The convolutions the families use, 32 channels wide: 3x3 same, strided 3x3 and 4x4, 2x2 valid and a bare
    ``ops.conv``; the first (3 channels in) and the 1x1 keep the float32 gradient."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="silu")(inputs)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="silu")(h)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same")(h)
    h = keras.layers.Conv2D(32, 4, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(32, 1)(h)
    h = keras.layers.Conv2D(32, 2, padding="valid")(h)
    kernel = keras.ops.convert_to_tensor(np.random.default_rng(seed).standard_normal((3, 3, 32, 32)).astype("float32"))
    out = keras.layers.Lambda(lambda t: keras.ops.conv(t, kernel * 0.1, padding="same"))(h)
    return keras.Model(inputs, out)


def _bf16_op_types(graph: tf.Graph) -> set[str]:
    return {op.type for op in graph.get_operations() if "T" in op.node_def.attr and op.get_attr("T") == tf.bfloat16}


def _step(model: keras.Model, bf16: bool) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], set[str]]:
    """Output, input gradient and kernel gradients of one traced step; the op types computing in bfloat16."""
    x = tf.constant(np.random.default_rng(1).standard_normal((8, 12, 12, 3)).astype("float32"))

    @tf.function(autograph=False)
    def step(x: tf.Tensor) -> tuple:
        with bf16_filter_gradients(bf16), tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
            loss = tf.reduce_sum(tf.square(y))
        dx, *dk = tape.gradient(loss, [x, *model.trainable_variables])
        return y, dx, dk

    y, dx, dk = step(x)
    return y.numpy(), dx.numpy(), [g.numpy() for g in dk], _bf16_op_types(step.get_concrete_function(x).graph)


def test_kernel_gradients_come_from_bfloat16_operands_and_agree_to_its_rounding() -> None:
    model = _conv_model()
    y32, dx32, dk32, ops32 = _step(model, bf16=False)
    y16, dx16, dk16, ops16 = _step(model, bf16=True)
    assert "Conv2DBackpropFilter" in ops16 and "Conv2DBackpropFilter" not in ops32
    np.testing.assert_array_equal(y16, y32)  # the forward is Keras' own
    np.testing.assert_allclose(dx16, dx32, rtol=1e-5, atol=1e-5 * np.abs(dx32).max())  # so is the input gradient
    kernels = [v.path for v in model.trainable_variables]
    for name, ours, exact in zip(kernels, dk16, dk32, strict=True):
        scale = np.abs(exact).max()
        np.testing.assert_allclose(ours, exact, rtol=0, atol=4 * BF16_EPS * scale, err_msg=name)
    kernel_grads = [(o, e) for name, o, e in zip(kernels, dk16, dk32, strict=True) if name.endswith("kernel")]
    assert any(not np.array_equal(o, e) for o, e in kernel_grads)  # rounded: the bfloat16 kernel ran


def test_second_order_gradients_flow_through_the_bfloat16_kernel_gradient() -> None:
    """StyleGAN2's R1 penalty differentiates the input gradient again, with respect to the kernels."""
    model = _conv_model(seed=3)
    x = tf.constant(np.random.default_rng(2).standard_normal((4, 12, 12, 3)).astype("float32"))

    def penalty_grads(bf16: bool) -> list[np.ndarray]:
        @tf.function(autograph=False)
        def step(x: tf.Tensor) -> list:
            with bf16_filter_gradients(bf16), tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    score = tf.reduce_sum(model(x))
                penalty = tf.reduce_sum(tf.square(inner.gradient(score, x)))
            return outer.gradient(penalty, model.trainable_variables)

        return [None if g is None else g.numpy() for g in step(x)]

    names = [v.path for v in model.trainable_variables]
    ours, exact = penalty_grads(True), penalty_grads(False)
    assert [g is None for g in ours] == [g is None for g in exact]  # biases after the last nonlinearity: no term
    assert sum(g is not None and np.abs(g).max() > 0 for g in exact) >= 5  # every kernel and the first bias
    for name, a, b in zip(names, ours, exact, strict=True):
        if b is not None:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * np.abs(b).max(), err_msg=name)


def test_convolutions_it_does_not_cover_keep_tensorflows_gradient() -> None:
    """Dilated and grouped convolutions, and those where bfloat16 does not pay: narrow layers and 1x1 kernels."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 32))
    h = keras.layers.Conv2D(32, 3, dilation_rate=2, padding="same")(inputs)
    h = keras.layers.Conv2D(32, 3, groups=2, padding="same")(h)
    h = keras.layers.Conv2D(32, 1)(h)
    h = keras.layers.Conv2D(16, 3, padding="same")(h)
    out = keras.layers.Conv2D(16, 3, padding="same")(h)
    model = keras.Model(inputs, out)
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 12, 12, 32)).astype("float32"))

    @tf.function(autograph=False)
    def step(x: tf.Tensor) -> list:
        with bf16_filter_gradients(), tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x))
        return tape.gradient(loss, model.trainable_variables)

    assert all(g is not None for g in step(x))
    assert _bf16_op_types(step.get_concrete_function(x).graph) == set()


def test_keras_convolution_is_restored_after_the_block_even_on_error() -> None:
    original = tf_nn.conv
    with bf16_filter_gradients():
        assert tf_nn.conv is not original
    assert tf_nn.conv is original
    with pytest.raises(RuntimeError), bf16_filter_gradients():
        raise RuntimeError("a failed trace")
    assert tf_nn.conv is original
    with bf16_filter_gradients(False):
        assert tf_nn.conv is original


def _ddpm_stepper_run(bf16_filter_gradients: bool | None) -> tuple[Any, list[np.ndarray], set[str]]:
    """Three steps of a tiny DDPM; the stepper, how far each U-Net weight moved and the losses, the step's
    bfloat16 ops."""
    from imagegen.config import load_params
    from imagegen.data.loader import BatchStream
    from imagegen.data.processed import Split
    from imagegen.training.families import build_family
    from imagegen.training.step_tensorflow import TensorFlowStepper

    params = load_params(None, ["ddpm.base_channels=32", "ddpm.channel_mults=[1]", "ddpm.timesteps=50"])
    keras.utils.set_random_seed(0)
    family = build_family("ddpm", params, (8, 8, 1), 10)
    stepper = TensorFlowStepper(family, jit_compile=False, branches=1, bf16_filter_gradients=bf16_filter_gradients)
    start = [v.numpy() for v in family.networks["unet"].weights]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    stream = BatchStream(Split(images, rng.integers(0, 10, len(images))), 16, seed=0)
    losses = []
    for _ in range(3):
        b = next(stream)
        batch = {"images": b.images, "labels": b.labels, **family.noise(rng, b.labels)}
        losses.append(float(stepper.step(batch)["loss"]))
    ops = _bf16_op_types(stepper._step_fn.get_concrete_function(dict(batch)).graph)
    updates = [v.numpy() - w for v, w in zip(family.networks["unet"].weights, start, strict=True)]
    return stepper, [*updates, np.asarray(losses)], ops


def test_a_ddpm_train_step_with_bfloat16_kernel_gradients_trains_like_float32() -> None:
    default, exact, exact_ops = _ddpm_stepper_run(None)
    assert default.bf16_filter_gradients is False  # this process computes in float32: it follows suit
    stepper, ours, ops = _ddpm_stepper_run(True)
    assert stepper.bf16_filter_gradients and "Conv2DBackpropFilter" in ops and not exact_ops
    np.testing.assert_allclose(ours[-1], exact[-1], rtol=1e-4)  # the losses
    # Adam moves a weight whose gradient is near zero by up to its step size in either direction, so single
    # weights may differ; the moves as a whole agree.
    exact_moves, our_moves = (np.concatenate([u.ravel() for u in run[:-1]]) for run in (exact, ours))
    assert np.linalg.norm(our_moves - exact_moves) < 0.02 * np.linalg.norm(exact_moves)
