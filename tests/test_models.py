"""Specifications of the model builders (DCGAN, VAE, DDPM U-Net), their layers and their losses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from imagegen.config import DCGANConfig, DDPMConfig, VAEConfig
from imagegen.errors import ConfigError
from imagegen.models import dcgan, unet, vae
from imagegen.models.layers import AttentionBlock, GroupNormalization, ResBlock, SinusoidalEmbedding, conv_plan

NUM_CLASSES = 10
SIZES = [16, 32]


def tiny_dcgan(conditional: bool = False) -> DCGANConfig:
    return DCGANConfig(latent_dim=8, base_filters=8, conditional=conditional)


def tiny_vae() -> VAEConfig:
    return VAEConfig(latent_dim=4, base_filters=8)


def tiny_ddpm(conditional: bool = False) -> DDPMConfig:
    return DDPMConfig(
        base_channels=8,
        groups=4,
        channel_mults=[1, 2],
        attention_resolutions=[8],
        conditional=conditional,
    )


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def images(n: int, size: int, channels: int) -> np.ndarray:
    return rng().uniform(-1, 1, (n, size, size, channels)).astype("float32")


def labels(n: int) -> np.ndarray:
    return (np.arange(n) % NUM_CLASSES).astype("int32")


def assert_round_trips(model: keras.Model, inputs: list | np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    expected = model(inputs, training=False)
    got = loaded(inputs, training=False)
    for e, g in zip(keras.tree.flatten(expected), keras.tree.flatten(got), strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(e), ops.convert_to_numpy(g))


# --------------------------------------------------------------------------------------------------
# Layers


def test_conv_plan_shrinks_to_a_small_seed() -> None:
    assert conv_plan(8, "x") == (4, 1)
    assert conv_plan(16, "x") == (4, 2)
    assert conv_plan(28, "x") == (7, 2)
    assert conv_plan(32, "x") == (4, 3)
    assert conv_plan(64, "x") == (4, 4)


def test_sinusoidal_embedding_gives_distinct_rows_per_timestep() -> None:
    emb = ops.convert_to_numpy(SinusoidalEmbedding(9)(np.array([0, 1, 500, 999], dtype="int32")))
    assert emb.shape == (4, 9) and emb.dtype == np.float32
    assert np.all(np.abs(emb) <= 1.0)
    assert len({tuple(np.round(row, 5)) for row in emb}) == 4


def test_resblock_changes_width_and_uses_the_time_embedding() -> None:
    block = ResBlock(8, groups=4)
    x = images(2, 8, 4)
    temb = rng().standard_normal((2, 16)).astype("float32")
    out = ops.convert_to_numpy(block([x, temb]))
    assert out.shape == (2, 8, 8, 8)
    other = ops.convert_to_numpy(block([x, temb + 1.0]))
    assert not np.allclose(out, other)


def test_attention_block_keeps_the_shape() -> None:
    x = images(2, 8, 8)
    assert tuple(AttentionBlock(groups=4)(x).shape) == (2, 8, 8, 8)


def test_attention_block_is_softmax_attention_through_its_qkv_and_proj_weights() -> None:
    # The block reads its Dense weights directly (q, k, v from slices of the qkv kernel): a numpy reference of
    # x + proj(softmax(q k^T / sqrt(C)) v), with q, k, v the thirds of qkv(norm(x)), pins which slice is which.
    block = AttentionBlock(groups=4)
    x = images(2, 4, 8)
    block.build(x.shape)
    generator = rng()
    for layer in (block.qkv, block.proj):
        layer.set_weights([generator.standard_normal(w.shape).astype("float32") * 0.3 for w in layer.get_weights()])
    out = ops.convert_to_numpy(block(x))
    rows = ops.convert_to_numpy(block.norm(x)).reshape(2, 16, 8)
    q, k, v = np.split(rows @ block.qkv.get_weights()[0] + block.qkv.get_weights()[1], 3, axis=-1)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(8)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    kernel, bias = block.proj.get_weights()
    expected = x + ((weights @ v) @ kernel + bias).reshape(2, 4, 4, 8)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_layers_rebuild_from_their_config() -> None:
    for layer in (
        SinusoidalEmbedding(6, max_period=100.0),
        ResBlock(8, groups=2, dropout=0.1),
        AttentionBlock(4),
    ):
        clone = layer.__class__.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


# --------------------------------------------------------------------------------------------------
# DCGAN


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("conditional", [False, True])
def test_generator_makes_float32_images_in_tanh_range(size: int, conditional: bool) -> None:
    cfg = tiny_dcgan(conditional)
    gen = dcgan.build_generator(cfg, size, 3, NUM_CLASSES)
    z = rng().standard_normal((4, cfg.latent_dim)).astype("float32")
    out = gen([z, labels(4)] if conditional else z)
    assert tuple(out.shape) == (4, size, size, 3)
    assert out.dtype == "float32"
    out = ops.convert_to_numpy(out)
    assert np.all(np.abs(out) <= 1.0)
    assert [i.name for i in gen.inputs] == (["z", "label"] if conditional else ["z"])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("conditional", [False, True])
def test_discriminator_gives_one_float32_logit_per_image(size: int, conditional: bool) -> None:
    disc = dcgan.build_discriminator(tiny_dcgan(conditional), size, 1, NUM_CLASSES)
    x = images(5, size, 1)
    out = disc([x, labels(5)] if conditional else x)
    assert tuple(out.shape) == (5, 1)
    assert out.dtype == "float32"


def test_conditional_discriminator_depends_on_the_label() -> None:
    disc = dcgan.build_discriminator(tiny_dcgan(True), 16, 1, NUM_CLASSES)
    x = images(3, 16, 1)
    a = ops.convert_to_numpy(disc([x, np.zeros(3, "int32")]))
    b = ops.convert_to_numpy(disc([x, np.ones(3, "int32")]))
    assert not np.allclose(a, b)


@pytest.mark.parametrize("size", [6, 10, 18])
def test_dcgan_refuses_an_unsupported_image_size_naming_it(size: int) -> None:
    with pytest.raises(ConfigError, match=f"image_size={size}"):
        dcgan.build_generator(tiny_dcgan(), size, 1, NUM_CLASSES)
    with pytest.raises(ConfigError, match=f"image_size={size}"):
        dcgan.build_discriminator(tiny_dcgan(), size, 1, NUM_CLASSES)


def test_conditional_gan_round_trips_through_a_keras_file(tmp_path: Path) -> None:
    cfg = tiny_dcgan(True)
    gen = dcgan.build_generator(cfg, 16, 1, NUM_CLASSES)
    z = rng().standard_normal((2, cfg.latent_dim)).astype("float32")
    assert_round_trips(gen, [z, labels(2)], tmp_path)
    disc = dcgan.build_discriminator(cfg, 16, 1, NUM_CLASSES)
    assert_round_trips(disc, [images(2, 16, 1), labels(2)], tmp_path)


def test_gan_losses_match_binary_cross_entropy() -> None:
    zero = np.zeros((4, 1), "float32")
    d = float(ops.convert_to_numpy(dcgan.discriminator_loss(zero, zero)))
    g = float(ops.convert_to_numpy(dcgan.generator_loss(zero)))
    assert d == pytest.approx(2 * np.log(2), rel=1e-6)
    assert g == pytest.approx(np.log(2), rel=1e-6)
    confident = dcgan.discriminator_loss(np.full((4, 1), 50.0, "float32"), np.full((4, 1), -50.0, "float32"))
    assert 0.0 <= float(ops.convert_to_numpy(confident)) < 1e-6


def test_gan_losses_are_finite_and_non_negative_for_extreme_logits() -> None:
    logits = np.array([[-1e4], [-30.0], [0.0], [30.0], [1e4]], "float32")
    for loss in (dcgan.discriminator_loss(logits, logits[::-1]), dcgan.generator_loss(logits)):
        value = ops.convert_to_numpy(loss)
        assert value.shape == () and np.isfinite(value) and value >= 0


# --------------------------------------------------------------------------------------------------
# VAE


@pytest.mark.parametrize("size", SIZES)
def test_vae_encodes_to_mean_and_log_variance_and_decodes_to_images(size: int) -> None:
    cfg = tiny_vae()
    enc = vae.build_encoder(cfg, size, 3)
    dec = vae.build_decoder(cfg, size, 3)
    z_mean, z_log_var = enc(images(4, size, 3))
    assert tuple(z_mean.shape) == tuple(z_log_var.shape) == (4, cfg.latent_dim)
    assert z_mean.dtype == z_log_var.dtype == "float32"
    out = dec(z_mean)
    assert tuple(out.shape) == (4, size, size, 3) and out.dtype == "float32"
    assert np.all(np.abs(ops.convert_to_numpy(out)) <= 1.0)


def test_vae_refuses_an_unsupported_image_size_naming_it() -> None:
    with pytest.raises(ConfigError, match="image_size=18"):
        vae.build_encoder(tiny_vae(), 18, 1)
    with pytest.raises(ConfigError, match="image_size=18"):
        vae.build_decoder(tiny_vae(), 18, 1)


def test_vae_round_trips_through_a_keras_file(tmp_path: Path) -> None:
    cfg = tiny_vae()
    assert_round_trips(vae.build_encoder(cfg, 16, 1), images(2, 16, 1), tmp_path)
    z = rng().standard_normal((2, cfg.latent_dim)).astype("float32")
    assert_round_trips(vae.build_decoder(cfg, 16, 1), z, tmp_path)


def test_kl_of_the_standard_normal_posterior_is_zero() -> None:
    zeros = np.zeros((3, 5), "float32")
    assert float(ops.convert_to_numpy(vae.kl_divergence(zeros, zeros))) == 0.0


def test_kl_matches_the_closed_form_summed_per_image() -> None:
    mean = rng().standard_normal((3, 5)).astype("float32")
    log_var = rng().uniform(-2, 1, (3, 5)).astype("float32")
    expected = np.mean(np.sum(0.5 * (mean**2 + np.exp(log_var) - 1 - log_var), axis=1))
    got = float(ops.convert_to_numpy(vae.kl_divergence(mean, log_var)))
    assert got == pytest.approx(expected, rel=1e-5)
    assert got > 0


def test_reconstruction_loss_sums_squared_error_per_image_and_averages_the_batch() -> None:
    x = images(3, 4, 2)
    x_hat = np.zeros_like(x)
    expected = np.mean(np.sum(x**2, axis=(1, 2, 3)))
    assert float(ops.convert_to_numpy(vae.reconstruction_loss(x, x_hat))) == pytest.approx(expected, rel=1e-5)
    assert float(ops.convert_to_numpy(vae.reconstruction_loss(x, x))) == 0.0


def test_reparameterize_shifts_and_scales_the_given_noise() -> None:
    mean = np.array([[1.0, -2.0]], "float32")
    log_var = np.array([[0.0, np.log(4.0)]], "float32")
    eps = np.array([[0.5, 0.5]], "float32")
    z = ops.convert_to_numpy(vae.reparameterize(mean, log_var, eps))
    np.testing.assert_allclose(z, [[1.5, -1.0]], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# U-Net


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("conditional", [False, True])
def test_unet_predicts_noise_of_the_input_shape(size: int, conditional: bool) -> None:
    model = unet.build_unet(tiny_ddpm(conditional), size, 3, NUM_CLASSES)
    x = images(3, size, 3)
    t = np.array([0, 17, 999], "int32")
    out = model([x, t, labels(3)] if conditional else [x, t])
    assert tuple(out.shape) == (3, size, size, 3)
    assert out.dtype == "float32"
    assert [i.name for i in model.inputs] == (["x_t", "t", "label"] if conditional else ["x_t", "t"])


def test_untrained_unet_predicts_zero_noise() -> None:
    model = unet.build_unet(tiny_ddpm(), 16, 1, NUM_CLASSES)
    out = ops.convert_to_numpy(model([images(2, 16, 1), np.array([3, 4], "int32")]))
    assert np.all(out == 0.0)


def randomize_output_conv(model: keras.Model) -> None:
    """The final conv is zero-initialised; give it weights so outputs depend on everything."""
    layer = model.get_layer("eps")
    layer.set_weights([rng().normal(0, 0.1, w.shape).astype("float32") for w in layer.get_weights()])


def test_unet_accepts_the_null_label_and_depends_on_t_and_label() -> None:
    model = unet.build_unet(tiny_ddpm(True), 16, 1, NUM_CLASSES)
    randomize_output_conv(model)
    x = images(2, 16, 1)
    t = np.array([5, 5], "int32")

    def eps(t_: np.ndarray, label: int) -> np.ndarray:
        return ops.convert_to_numpy(model([x, t_, np.full(2, label, "int32")]))

    null = eps(t, NUM_CLASSES)
    assert np.all(np.isfinite(null))
    assert not np.allclose(null, eps(t, 3))
    assert not np.allclose(eps(t, 3), eps(t + 100, 3))
    np.testing.assert_allclose(eps(t, 3), ops.convert_to_numpy(model([x, t.astype("float32"), np.full(2, 3)])))


def test_unet_refuses_an_image_size_its_downsamplings_do_not_divide() -> None:
    cfg = DDPMConfig(base_channels=8, groups=4, channel_mults=[1, 2, 2])
    with pytest.raises(ConfigError, match="image_size=18"):
        unet.build_unet(cfg, 18, 1, NUM_CLASSES)


def test_unet_round_trips_through_a_keras_file(tmp_path: Path) -> None:
    model = unet.build_unet(tiny_ddpm(True), 16, 1, NUM_CLASSES)
    randomize_output_conv(model)
    assert_round_trips(model, [images(2, 16, 1), np.array([1, 900], "int32"), labels(2)], tmp_path)


# --------------------------------------------------------------------------------------------------
# Other backends


JAX_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from imagegen.config import DCGANConfig, DDPMConfig, VAEConfig
    from imagegen.models import dcgan, unet, vae
    import keras
    assert keras.backend.backend() == "jax"
    y = np.arange(2, dtype="int32")
    g = dcgan.build_generator(DCGANConfig(latent_dim=8, base_filters=8, conditional=True), 16, 1, 10)
    x = np.asarray(g([np.zeros((2, 8), "float32"), y]))
    d = dcgan.build_discriminator(DCGANConfig(latent_dim=8, base_filters=8, conditional=True), 16, 1, 10)
    assert d([x, y]).shape == (2, 1)
    m, lv = vae.build_encoder(VAEConfig(latent_dim=4, base_filters=8), 16, 1)(x)
    assert vae.build_decoder(VAEConfig(latent_dim=4, base_filters=8), 16, 1)(np.asarray(m)).shape == x.shape
    cfg = DDPMConfig(base_channels=8, groups=4, conditional=True)
    assert unet.build_unet(cfg, 16, 1, 10)([x, y, y]).shape == x.shape
    print("ok")
    """
)


@pytest.mark.slow
@pytest.mark.jax
def test_every_model_builds_and_runs_under_jax() -> None:
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("silu", [False, True], ids=["norm", "norm+silu"])
@pytest.mark.parametrize(("shape", "groups"), [((4, 16, 16, 32), 8), ((3, 8, 8, 64), 8), ((2, 4, 4, 16), 4)])
def test_our_group_normalization_computes_what_keras_computes_values_and_gradients(shape, groups, silu) -> None:
    """Same weights, same outputs and gradients (input, gamma, beta) to float32 rounding as Keras' layer (then
    SiLU, for ``silu=True``) differentiated automatically, also for off-centre activations: the hand-written
    backward pass is the exact gradient."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant((rng.standard_normal(shape) * 3.0 + 2.0).astype("float32"))
    gamma, beta = (rng.standard_normal(shape[-1]).astype("float32") for _ in range(2))
    ours = GroupNormalization(groups=groups, epsilon=1e-5, silu=silu)
    theirs = keras.layers.GroupNormalization(groups=groups, epsilon=1e-5)
    for layer in (ours, theirs):
        layer.build(shape)
        layer.set_weights([gamma, beta])
    outputs, grads = [], []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            if layer is theirs and silu:
                y = keras.ops.silu(y)
            loss = tf.reduce_sum(y * y * tf.cast(tf.range(shape[-1]), "float32"))  # channels weighted unequally
        outputs.append(y.numpy())
        grads.append([g.numpy() for g in tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
    for ours_grad, their_grad in zip(*grads, strict=True):
        scale = np.abs(their_grad).max()
        np.testing.assert_allclose(ours_grad / scale, their_grad / scale, atol=1e-5)
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights] == ["gamma", "beta"]


def test_group_normalization_with_silu_keeps_it_through_a_saved_model(tmp_path: Path) -> None:
    """``silu`` is part of the layer's config: a functional model saved with it loads computing the same."""
    inputs = keras.Input((8, 8, 16))
    model = keras.Model(inputs, GroupNormalization(groups=4, silu=True, name="norm")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("norm").silu is True
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 16)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert float(np.asarray(model(x)).min()) >= -0.2785  # SiLU's minimum: it was applied


def test_weights_saved_with_keras_group_normalization_load_into_ours(tmp_path: Path) -> None:
    """Models trained before ours replaced keras' layer keep loading: the weight files are the same."""

    def model(norm: type) -> keras.Model:
        inputs = keras.Input((8, 8, 16))
        return keras.Model(inputs, norm(groups=4, epsilon=1e-5, name="norm")(keras.layers.Conv2D(16, 3)(inputs)))

    old = model(keras.layers.GroupNormalization)
    old.layers[-1].set_weights([np.linspace(0.5, 2, 16, dtype="float32"), np.linspace(-1, 1, 16, dtype="float32")])
    old.save_weights(tmp_path / "old.weights.h5")
    new = model(GroupNormalization)
    new.load_weights(tmp_path / "old.weights.h5")
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 16)).astype("float32")
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(old(x)), atol=1e-5)
