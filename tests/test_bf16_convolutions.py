"""With bfloat16 CPU math, the TensorFlow train step computes in bfloat16 what oneDNN's math mode leaves in float32:
every kernel gradient, and strided and transposed convolutions whole. Stride-1 forwards and input gradients stay
TensorFlow's; the rest agrees to bfloat16 rounding; second-order gradients flow."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("bfloat16 convolutions belong to the TensorFlow backend", allow_module_level=True)

from keras.src.backend.tensorflow import nn as tf_nn  # noqa: E402

from imagegen.training.step_tensorflow import bf16_convolutions  # noqa: E402

BF16_EPS = 2.0**-8  # bfloat16's relative rounding step


def _conv_model(seed: int = 0) -> keras.Model:
    """Stride-1 convolutions as the families use them, 32 channels wide: 3x3 same, 2x2 valid and a bare
    ``ops.conv``; the first (3 channels in) and the 1x1 keep the float32 gradient."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="silu")(inputs)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="silu")(h)
    h = keras.layers.Conv2D(32, 1)(h)
    h = keras.layers.Conv2D(32, 2, padding="valid", activation="relu")(h)
    kernel = keras.ops.convert_to_tensor(np.random.default_rng(seed).standard_normal((3, 3, 32, 32)).astype("float32"))
    out = keras.layers.Lambda(lambda t: keras.ops.conv(t, kernel * 0.1, padding="same"))(h)
    return keras.Model(inputs, out)


def _resampling_model(seed: int = 0) -> keras.Model:
    """The resampling convolutions of the DCGAN, the VAE and the U-Net's downsampling, 32-64 channels wide:
    strided 3x3 and 4x4, 4x4 transposed with and without bias, a 3x3 transposed with stride 1."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(32, 3, padding="same", activation="silu")(inputs)
    h = keras.layers.Conv2D(64, 3, strides=2, padding="same", activation="silu")(h)
    h = keras.layers.Conv2D(64, 4, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2DTranspose(32, 4, strides=2, padding="same", use_bias=False, activation="relu")(h)
    h = keras.layers.Conv2DTranspose(32, 4, strides=2, padding="same", activation="silu")(h)
    out = keras.layers.Conv2DTranspose(32, 3, padding="same")(h)
    return keras.Model(inputs, out)


def _bf16_op_types(graph: tf.Graph) -> set[str]:
    return {op.type for op in graph.get_operations() if "T" in op.node_def.attr and op.get_attr("T") == tf.bfloat16}


def _step(model: keras.Model, bf16: bool) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], set[str]]:
    """Output, input gradient and kernel gradients of one traced step; the op types computing in bfloat16."""
    x = tf.constant(np.random.default_rng(1).standard_normal((8, 12, 12, 3)).astype("float32"))

    @tf.function(autograph=False)
    def step(x: tf.Tensor) -> tuple:
        with bf16_convolutions(bf16), tf.GradientTape() as tape:
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
    assert ops16 == {"Conv2DBackpropFilter"} and not ops32  # stride 1: the math mode's job otherwise
    np.testing.assert_array_equal(y16, y32)  # the forward is Keras' own
    np.testing.assert_allclose(dx16, dx32, rtol=1e-5, atol=1e-5 * np.abs(dx32).max())  # so is the input gradient
    kernels = [v.path for v in model.trainable_variables]
    for name, ours, exact in zip(kernels, dk16, dk32, strict=True):
        scale = np.abs(exact).max()
        np.testing.assert_allclose(ours, exact, rtol=0, atol=4 * BF16_EPS * scale, err_msg=name)
    kernel_grads = [(o, e) for name, o, e in zip(kernels, dk16, dk32, strict=True) if name.endswith("kernel")]
    assert any(not np.array_equal(o, e) for o, e in kernel_grads)  # rounded: the bfloat16 kernel ran


@pytest.mark.parametrize(
    "layer",
    [
        keras.layers.Conv2D(64, 3, strides=2, padding="same"),  # the U-Net's and the VAE's downsampling
        keras.layers.Conv2D(64, 4, strides=2, padding="same"),  # the DCGAN discriminator's
        keras.layers.Conv2DTranspose(32, 4, strides=2, padding="same", use_bias=False),  # the DCGAN generator's
        keras.layers.Conv2DTranspose(32, 3, padding="valid"),
    ],
    ids=["strided_3x3", "strided_4x4", "transposed_4x4", "transposed_stride_1"],
)
def test_strided_and_transposed_convolutions_compute_in_bfloat16_and_agree_to_its_rounding(layer: Any) -> None:
    """Forward, input gradient and kernel gradient each from operands rounded once: within a few bfloat16 steps."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 32))
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(1)
    x = tf.constant(rng.standard_normal((4, 8, 8, 32)).astype("float32"))
    weight = tf.constant(rng.standard_normal((4, *model.output.shape[1:])).astype("float32"))

    def run(bf16: bool) -> tuple[list[np.ndarray], set[str]]:
        @tf.function(autograph=False)
        def step(x: tf.Tensor) -> tuple:
            with bf16_convolutions(bf16), tf.GradientTape() as tape:
                tape.watch(x)
                y = model(x)
                loss = tf.reduce_sum(y * weight)  # linear: the output gradient is exact
            return y, *tape.gradient(loss, [x, model.trainable_variables[0]])

        return [t.numpy() for t in step(x)], _bf16_op_types(step.get_concrete_function(x).graph)

    exact, exact_ops = run(False)
    ours, ops = run(True)
    assert ops == {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"} and not exact_ops
    for name, a, b in zip(["output", "input gradient", "kernel gradient"], ours, exact, strict=True):
        assert not np.array_equal(a, b), name  # rounded: computed in bfloat16
        np.testing.assert_allclose(a, b, rtol=0, atol=4 * BF16_EPS * np.abs(b).max(), err_msg=name)


def test_a_stack_of_strided_and_transposed_convolutions_runs_them_all_in_bfloat16() -> None:
    y32, dx32, dk32, ops32 = _step(_resampling_model(), bf16=False)
    y16, dx16, dk16, ops16 = _step(_resampling_model(), bf16=True)
    assert ops16 == {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"} and not ops32
    # Roundings compound through five layers (and flip ReLU gates): agreement as a whole, not per element.
    for a, b in [(y16, y32), (dx16, dx32), *zip(dk16, dk32, strict=True)]:
        assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(b)


@pytest.mark.parametrize("build", [_conv_model, _resampling_model], ids=["stride_1", "strided_and_transposed"])
def test_second_order_gradients_flow_through_the_bfloat16_convolutions(build: Any) -> None:
    """StyleGAN2's R1 penalty differentiates the input gradient again, with respect to the kernels. Its stride-1
    convolutions round kernel gradients only: per element; bfloat16 forwards compound: as a whole."""
    model = build(seed=3)
    x = tf.constant(np.random.default_rng(2).standard_normal((4, 12, 12, 3)).astype("float32"))

    def penalty_grads(bf16: bool) -> list[np.ndarray]:
        @tf.function(autograph=False)
        def step(x: tf.Tensor) -> list:
            with bf16_convolutions(bf16), tf.GradientTape() as outer:
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
        if b is None:
            continue
        if build is _conv_model:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * np.abs(b).max(), err_msg=name)
        else:
            assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(b), name


def test_convolutions_it_does_not_cover_keep_tensorflows_gradient() -> None:
    """Dilated and grouped convolutions, transposed ones with output padding, and those where bfloat16 does not
    pay: narrow layers and 1x1 kernels, strided or not."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 32))
    h = keras.layers.Conv2D(32, 3, dilation_rate=2, padding="same")(inputs)
    h = keras.layers.Conv2D(32, 3, groups=2, padding="same")(h)
    h = keras.layers.Conv2D(32, 1)(h)
    h = keras.layers.Conv2D(32, 1, strides=2)(h)
    h = keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", output_padding=1)(h)
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same")(h)
    h = keras.layers.Conv2DTranspose(16, 4, strides=2, padding="same")(h)
    out = keras.layers.Conv2D(16, 3, padding="same")(h)
    model = keras.Model(inputs, out)
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 12, 12, 32)).astype("float32"))

    @tf.function(autograph=False)
    def step(x: tf.Tensor) -> list:
        with bf16_convolutions(), tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x))
        return tape.gradient(loss, model.trainable_variables)

    assert all(g is not None for g in step(x))
    assert _bf16_op_types(step.get_concrete_function(x).graph) == set()


def test_keras_convolutions_are_restored_after_the_block_even_on_error() -> None:
    originals = (tf_nn.conv, tf_nn.conv_transpose)
    with bf16_convolutions():
        assert tf_nn.conv is not originals[0] and tf_nn.conv_transpose is not originals[1]
    assert (tf_nn.conv, tf_nn.conv_transpose) == originals
    with pytest.raises(RuntimeError), bf16_convolutions():
        raise RuntimeError("a failed trace")
    assert (tf_nn.conv, tf_nn.conv_transpose) == originals
    with bf16_convolutions(False):
        assert (tf_nn.conv, tf_nn.conv_transpose) == originals


def _ddpm_stepper_run(bf16_convolutions: bool | None) -> tuple[Any, list[np.ndarray], set[str]]:
    """Three steps of a tiny DDPM (32 channels, one strided downsampling); the stepper, how far each U-Net weight
    moved and the losses, the step's bfloat16 ops."""
    from imagegen.config import load_params
    from imagegen.data.loader import BatchStream
    from imagegen.data.processed import Split
    from imagegen.training.families import build_family
    from imagegen.training.step_tensorflow import TensorFlowStepper

    params = load_params(None, ["ddpm.base_channels=32", "ddpm.channel_mults=[1,1]", "ddpm.timesteps=50"])
    keras.utils.set_random_seed(0)
    family = build_family("ddpm", params, (8, 8, 1), 10)
    stepper = TensorFlowStepper(family, jit_compile=False, branches=1, bf16_convolutions=bf16_convolutions)
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


def test_a_ddpm_train_step_with_bfloat16_convolutions_trains_like_float32() -> None:
    default, exact, exact_ops = _ddpm_stepper_run(None)
    assert default.bf16_convolutions is False  # this process computes in float32: it follows suit
    stepper, ours, ops = _ddpm_stepper_run(True)
    assert stepper.bf16_convolutions and ops == {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"}
    assert not exact_ops
    np.testing.assert_allclose(ours[-1], exact[-1], rtol=1e-4)  # the losses
    # Adam moves a weight whose gradient is near zero by up to its step size in either direction, so single
    # weights may differ; the moves as a whole agree.
    exact_moves, our_moves = (np.concatenate([u.ravel() for u in run[:-1]]) for run in (exact, ours))
    assert np.linalg.norm(our_moves - exact_moves) < 0.05 * np.linalg.norm(exact_moves)
