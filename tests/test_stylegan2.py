"""StyleGAN2: the networks' shapes and modulated convolution, R1, ADA's augmentation and probability update,
truncation, and training that is deterministic and resumes exactly (ADA's host-side p included)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from imagegen.config import Params, load_params
from imagegen.models.stylegan2 import (
    StyleGAN2Generator,
    ada_update,
    augment,
    build_discriminator,
    draw_augment,
    modulated_conv,
    noise_size,
    num_ws,
    r1_penalty,
    value_and_input_gradient,
)
from imagegen.sampler_settings import SamplerSettings
from imagegen.stages.ingest import run_ingest
from imagegen.training.families import build_family
from imagegen.training.families.stylegan2 import generate
from tests.test_training import TINY, all_weights, make_trainer

TINY_SG2 = [
    "stylegan2.latent_dim=8",
    "stylegan2.w_dim=8",
    "stylegan2.base_channels=4",
    "stylegan2.max_channels=8",
    "stylegan2.r1_interval=2",
    "stylegan2.ada_interval=2",
    "stylegan2.ada_kimg=0.2",
    "stylegan2.ada_target=0.3",
]


def tiny_generator(conditional: bool = False) -> StyleGAN2Generator:
    gen = StyleGAN2Generator(
        image_size=16,
        channels=3,
        latent_dim=8,
        w_dim=8,
        mapping_layers=2,
        mapping_lr_multiplier=0.01,
        base_channels=4,
        max_channels=8,
        num_classes=10,
        conditional=conditional,
    )
    return gen


def numpy_conv_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same' cross-correlation of one image (H, W, C_in) with (k, k, C_in, C_out), zero-padded, in float64."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[:2]
    out = np.zeros((h, w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            out += xp[i : i + h, j : j + w] @ kernel[i, j].astype(np.float64)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Networks


@pytest.mark.parametrize("conditional", [False, True])
def test_generator_and_discriminator_shapes(conditional: bool) -> None:
    keras.utils.set_random_seed(0)
    gen = tiny_generator(conditional)
    n = 4
    z = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    noise = np.zeros((n, noise_size(16)), np.float32)
    labels = np.arange(n, dtype=np.int32)
    serving = [z, labels, noise] if conditional else [z, noise]
    images = keras.ops.convert_to_numpy(gen(serving))
    assert images.shape == (n, 16, 16, 3) and images.dtype == np.float32
    assert np.all(np.abs(images) <= 1.0)
    disc = build_discriminator(16, 3, 4, 8, num_classes=10, conditional=conditional)
    logits = keras.ops.convert_to_numpy(disc([images, labels] if conditional else images))
    assert logits.shape == (n, 1)
    assert num_ws(16) == 6 and noise_size(16) == 4 * 4 + 2 * 8 * 8 + 2 * 16 * 16


def test_the_generator_reads_the_noise_input_and_missing_noise_means_zeros() -> None:
    keras.utils.set_random_seed(0)
    gen = tiny_generator()
    z = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    zeros = np.zeros((2, noise_size(16)), np.float32)
    gen([z, zeros])  # builds the layers
    for conv in gen.convs:
        conv.noise_strength.assign(0.5)
    without = keras.ops.convert_to_numpy(gen(z))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gen([z, zeros])), without, atol=1e-6)
    noisy = keras.ops.convert_to_numpy(gen([z, np.ones_like(zeros)]))
    assert np.abs(noisy - without).max() > 1e-3


def test_modulated_conv_equals_a_grouped_conv_with_one_demodulated_kernel_per_sample() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 6, 4)).astype(np.float32)
    weight = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    styles = rng.uniform(0.2, 2.0, (3, 4)).astype(np.float32)
    for demodulate in (True, False):
        got = keras.ops.convert_to_numpy(modulated_conv(x, weight, styles, demodulate=demodulate))
        for b in range(3):
            kernel = weight.astype(np.float64) * styles[b][None, None, :, None]  # modulate the input channels
            if demodulate:
                kernel = kernel / np.sqrt(np.sum(kernel**2, axis=(0, 1, 2), keepdims=True) + 1e-8)
            np.testing.assert_allclose(got[b], numpy_conv_same(x[b], kernel), rtol=1e-4, atol=1e-4)


def test_demodulation_keeps_unit_output_variance_for_unit_variance_inputs() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 24, 24, 32)).astype(np.float32)
    weight = rng.standard_normal((3, 3, 32, 16)).astype(np.float32) * 3.0  # any scale: demodulation removes it
    styles = rng.uniform(0.1, 5.0, (8, 32)).astype(np.float32)
    y = keras.ops.convert_to_numpy(modulated_conv(x, weight, styles))
    interior = y[:, 1:-1, 1:-1, :]  # zero padding lowers the variance at the border
    assert np.var(interior) == pytest.approx(1.0, rel=0.05)
    raw = keras.ops.convert_to_numpy(modulated_conv(x, weight, styles, demodulate=False))
    assert np.var(raw[:, 1:-1, 1:-1, :]) > 10.0


def test_truncation_pulls_samples_towards_the_average_w(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    params = load_params(None, ["tracking.enabled=false", *TINY_SG2])
    family = build_family("stylegan2", params, (8, 8, 1), 10)
    gen = family.networks["generator_ema"]
    gen.w_avg.assign(np.full((8,), 0.3, np.float32))

    def draw(t: float | None) -> np.ndarray:
        settings = None if t is None else SamplerSettings(truncation=t)
        return generate(family, 16, np.random.default_rng(5), settings=settings)

    np.testing.assert_allclose(draw(1.0), draw(None), atol=1e-6)
    spread = {t: float(np.std(draw(t), axis=0).mean()) for t in (1.0, 0.5, 1e-4)}
    assert spread[1e-4] < spread[0.5] < spread[1.0]
    assert spread[1e-4] < 1e-3  # every w is w_avg: only the per-pixel noise differs, and it starts at strength 0


# ---------------------------------------------------------------------------------------------------------------
# R1


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 4, 2)).astype(np.float32)
    disc = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Flatten(), keras.layers.Dense(1)])
    disc.layers[-1].kernel.assign(a.reshape(-1, 1))
    disc.layers[-1].bias.assign(np.array([0.7], np.float32))
    x = rng.standard_normal((5, 4, 4, 2)).astype(np.float32)
    logits, grad = value_and_input_gradient(lambda v: disc(v), keras.ops.convert_to_tensor(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits)[:, 0], x.reshape(5, -1) @ a.reshape(-1) + 0.7, 1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grad), np.broadcast_to(a, x.shape), rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(r1_penalty(grad)), np.full(5, np.sum(a**2)), rtol=1e-5)


def test_r1_penalty_of_a_quadratic_discriminator_follows_its_closed_form() -> None:
    """D(x) = c ||x||^2 has gradient 2 c x, so the penalty is 4 c^2 ||x||^2 per image."""
    c = 0.3
    x = np.random.default_rng(4).standard_normal((3, 2, 2, 1)).astype(np.float32)
    _, grad = value_and_input_gradient(
        lambda v: c * keras.ops.sum(keras.ops.square(v), axis=(1, 2, 3)), keras.ops.convert_to_tensor(x)
    )
    expected = 4 * c**2 * np.sum(x**2, axis=(1, 2, 3))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(r1_penalty(grad)), expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# ADA


def test_ada_probability_moves_by_the_images_seen_over_the_speed_towards_the_target() -> None:
    assert ada_update(0.5, 0.8, 0.6, 256, 20_000) == pytest.approx(0.5 + 256 / 20_000)
    assert ada_update(0.5, 0.2, 0.6, 256, 20_000) == pytest.approx(0.5 - 256 / 20_000)
    assert ada_update(0.0, 0.1, 0.6, 256, 20_000) == 0.0  # clipped at 0
    assert ada_update(0.999, 1.0, 0.6, 256, 20_000) == 1.0  # and at 1
    assert ada_update(0.4, 0.6, 0.6, 256, 20_000) == 0.4  # on target: unchanged


def test_the_family_updates_ada_p_every_interval_from_the_mean_sign_of_d_real() -> None:
    keras.utils.set_random_seed(0)
    params = load_params(None, ["tracking.enabled=false", *TINY_SG2])  # interval 2, 200 images for 0 -> 1, target 0.3
    family = build_family("stylegan2", params, (8, 8, 1), 10)
    rng = np.random.default_rng(0)
    labels = np.zeros(10, np.int32)
    logged = []
    for sign in (1.0, 0.0, 1.0, 1.0, -1.0, -1.0):
        family.noise(rng, labels)
        logged.append(family.adapt({"real_sign": np.float32(sign)}))
    p1 = 20 / 200  # steps 1-2: r_t = 0.5 > 0.3, 20 images seen
    p2 = p1 + 20 / 200  # steps 3-4: r_t = 1
    p3 = p2 - 20 / 200  # steps 5-6: r_t = -1
    assert [row["ada_p"] for row in logged] == pytest.approx([0.0, p1, p1, p2, p2, p3])
    assert [row["r_t"] for row in logged] == pytest.approx([0.0, 0.5, 0.5, 1.0, 1.0, -1.0])


def test_shift_matrices_translate_with_reflect_padding() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 8, 8, 1)).astype(np.float32)
    drawn = draw_augment(np.random.default_rng(7), 40, 8, 1.0)
    for k in ("brightness", "contrast", "saturation"):
        drawn[k] = np.full_like(drawn[k], 0.0 if k == "brightness" else 1.0)
    drawn["cutout"] = np.ones_like(drawn["cutout"])
    got = keras.ops.convert_to_numpy(augment(x, drawn))
    padded = np.pad(x, ((0, 0), (8, 8), (8, 8), (0, 0)), mode="reflect")
    shifted = 0
    for b in range(40):
        matches = [
            (sy, sx)
            for sy in range(-1, 2)
            for sx in range(-1, 2)
            if np.allclose(got[b], padded[b, 8 - sy : 16 - sy, 8 - sx : 16 - sx])
        ]
        assert matches, f"image {b} is not an integer translation of its input"
        shifted += matches[0] != (0, 0)
    assert shifted > 20  # p = 1: most images moved (a zero shift is one of the nine draws)


def test_augmentation_is_the_identity_at_p_zero_and_its_draws_do_not_depend_on_p() -> None:
    x = np.random.default_rng(8).standard_normal((6, 8, 8, 3)).astype(np.float32)
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    identity = draw_augment(a, 6, 8, 0.0)
    applied = draw_augment(b, 6, 8, 1.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(augment(x, identity)), x, atol=1e-6)
    assert np.abs(keras.ops.convert_to_numpy(augment(x, applied)) - x).max() > 0.1
    assert a.standard_normal() == b.standard_normal()  # same number of draws whatever p


# ---------------------------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def digits8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    return run_ingest(load_params(None, ["tracking.enabled=false", "data.image_size=8"]), root / "digits")


def sg2_params(tmp_path: Path, *extra: str) -> Params:
    return load_params(None, [*TINY, *TINY_SG2, f"train.checkpoints_dir={tmp_path / 'ckpt'}", *extra])


def test_training_is_deterministic_and_resume_equals_an_uninterrupted_run(digits8: Path, tmp_path: Path) -> None:
    params = sg2_params(tmp_path)
    straight = make_trainer(params, "stylegan2", digits8, tmp_path / "a")
    straight.fit(8)
    again = make_trainer(params, "stylegan2", digits8, tmp_path / "c")
    again.fit(8)

    first = make_trainer(params, "stylegan2", digits8, tmp_path / "b")
    first.fit(6)
    resumed = make_trainer(params, "stylegan2", digits8, tmp_path / "b")
    assert resumed.resume() is not None and resumed.step == 6
    assert resumed.family.host_state == first.family.host_state  # ADA's p and the lazy R1 count come back
    resumed.fit(8)

    rows = straight.history
    assert {"d_loss", "g_loss", "r1_penalty", "ada_p", "r_t"} <= rows[-1].keys()
    assert rows[-1]["ada_p"] > 0  # tiny data, a strong discriminator: p has risen
    for run in (again, resumed):
        assert run.history[-1]["ada_p"] == pytest.approx(rows[-1]["ada_p"])
        for key in ("d_loss", "g_loss"):
            np.testing.assert_allclose(run.history[-1][key], rows[-1][key], rtol=1e-5)
        a, b = all_weights(straight), all_weights(run)
        assert a.keys() == b.keys() == {"generator", "generator_ema", "discriminator"}
        for name in a:
            for wa, wb in zip(a[name], b[name], strict=True):
                np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    w_avg = keras.ops.convert_to_numpy(straight.family.networks["generator"].w_avg)
    assert np.abs(w_avg).max() > 0  # tracked while training


# ---------------------------------------------------------------------------------------------------------------
# Export


@pytest.mark.parametrize("conditional", [False, True])
def test_export_takes_z_labels_and_noise_passes_parity_and_holds_builtin_ops_only(
    digits8: Path, tmp_path: Path, conditional: bool
) -> None:
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("export runs on the TensorFlow backend")
    from imagegen.export.tflite import check_builtin_ops
    from imagegen.stages.export import run_export
    from tests.test_export import tiny_params, train_tiny

    params = tiny_params(*TINY_SG2, f"stylegan2.conditional={str(conditional).lower()}")
    model_dir = train_tiny(params, "stylegan2", digits8, tmp_path)
    out = run_export(params, model_dir, tmp_path / "exports", report_dir=tmp_path / "reports")
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(entry["passed"] for entry in metrics["artifacts"].values()), metrics["artifacts"]
    assert metrics["artifacts"]["float32"]["max_abs_error"] <= 1
    fn = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    names = sorted(fn.structured_input_signature[1])
    assert names == (["label", "noise", "z"] if conditional else ["noise", "z"])
    ops = check_builtin_ops(out / "model_float32.tflite")
    assert "CONV_2D" in ops and not any(op.startswith("Flex") for op in ops), ops


def one_step_discriminator(gamma: float, lazy_step: bool) -> list[np.ndarray]:
    from imagegen.training.steppers import make_stepper

    params = load_params(None, ["tracking.enabled=false", *TINY_SG2, f"stylegan2.r1_gamma={gamma}"])
    keras.utils.set_random_seed(0)
    family = build_family("stylegan2", params, (8, 8, 1), 10)
    family.host_state["steps_drawn"] = 0 if lazy_step else 1  # r1_interval=2: step 0 applies R1, step 1 not
    stepper = make_stepper(family, jit_compile=False)
    rng = np.random.default_rng(0)
    labels = np.zeros(8, np.int32)
    images = rng.uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
    stepper.step({"images": images, "labels": labels, **family.noise(rng, labels)})
    stepper.push()
    return [keras.ops.convert_to_numpy(w) for w in family.networks["discriminator"].weights]


def test_lazy_r1_changes_the_discriminator_update_only_on_the_steps_that_apply_it() -> None:
    def largest_change(lazy_step: bool) -> float:
        weak, strong = one_step_discriminator(1e-9, lazy_step), one_step_discriminator(100.0, lazy_step)
        return max(float(np.abs(a - b).max()) for a, b in zip(weak, strong, strict=True))

    assert largest_change(lazy_step=True) > 1e-3
    assert largest_change(lazy_step=False) == 0.0
