"""The TensorFlow train step updates with TensorFlow's fused Adam kernel: Keras' Adam, one op per variable."""

from __future__ import annotations

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("the fused Adam update belongs to the TensorFlow backend", allow_module_level=True)

from imagegen.training.step_tensorflow import use_fused_adam  # noqa: E402


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.GroupNormalization(groups=4)(h)
    out = keras.layers.Dense(2)(keras.layers.Flatten()(h))
    return keras.Model(inputs, out)


def _train(optimizer: keras.optimizers.Optimizer, fused: bool, steps: int = 6) -> tuple[keras.Model, set[str]]:
    """``steps`` updates of a small model on fixed data; the model and the op types of the update's graph."""
    model = _model()
    optimizer.build(model.trainable_variables)
    if fused:
        assert use_fused_adam(optimizer)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 8, 8, 3)).astype("float32")
    y = rng.standard_normal((16, 2)).astype("float32")

    @tf.function(autograph=False)
    def step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    for _ in range(steps):
        step(x, y)
    op_types = {op.type for op in step.get_concrete_function(x, y).graph.get_operations()}
    return model, op_types


@pytest.mark.parametrize(
    "settings",
    [{"learning_rate": 0.01}, {"learning_rate": 0.002, "global_clipnorm": 1.0}, {"learning_rate": 0.002, "beta_1": 0.0,
     "beta_2": 0.99, "epsilon": 1e-8}],
    ids=["defaults", "clipped", "stylegan2_betas"],
)  # fmt: skip
def test_the_fused_update_is_keras_adam_to_float32_rounding(settings: dict) -> None:
    keras_model, keras_ops = _train(keras.optimizers.Adam(**settings), fused=False)
    fused_model, fused_ops = _train(keras.optimizers.Adam(**settings), fused=True)
    assert "ResourceApplyAdam" in fused_ops and "ResourceApplyAdam" not in keras_ops
    assert len(fused_ops) < len(keras_ops)
    for ours, theirs in zip(fused_model.weights, keras_model.weights, strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=2e-5, atol=1e-6, err_msg=ours.path)


def test_only_a_plain_adam_without_amsgrad_is_fused() -> None:
    assert not use_fused_adam(keras.optimizers.Adam(0.01, amsgrad=True))
    assert not use_fused_adam(keras.optimizers.SGD(0.01))
    assert not use_fused_adam(keras.optimizers.AdamW(0.01))
    _, ops = _train(keras.optimizers.Adam(0.01, amsgrad=True), fused=False)
    assert "ResourceApplyAdam" not in ops
