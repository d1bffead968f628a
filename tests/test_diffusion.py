"""Specifications of the diffusion math: schedules, forward noising, DDPM/DDIM samplers, guidance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from keras import ops

from imagegen.config import DDPMConfig
from imagegen.errors import ConfigError
from imagegen.models import diffusion as D
from imagegen.sampler_settings import SamplerSettings

SHAPE = (3, 4, 4, 2)


def to_np(x) -> np.ndarray:
    return ops.convert_to_numpy(x)


def small_schedule(kind: str = "linear", timesteps: int = 20) -> D.NoiseSchedule:
    # A larger beta_end than the default so that 20 steps actually reach noise.
    return D.make_schedule(kind, timesteps, 1e-4, 0.2)


def linear_eps_fn(x_t, t):
    """A deterministic stand-in for a network: eps = 0.3 x_t + 0.01 t, per image."""
    t = ops.reshape(ops.cast(t, "float32"), (-1, 1, 1, 1))
    return 0.3 * x_t + 0.01 * t


def oracle_eps_fn(schedule: D.NoiseSchedule, x0: np.ndarray):
    """The exact noise that turns the known x0 into x_t at t."""

    def eps_fn(x_t, t):
        t = to_np(t)
        sqrt_abar = schedule.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        sqrt_1m = schedule.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return (to_np(x_t) - sqrt_abar * x0) / sqrt_1m

    return eps_fn


def known_x0() -> np.ndarray:
    return np.random.default_rng(7).uniform(-1, 1, SHAPE).astype("float32")


# --------------------------------------------------------------------------------------------------
# Schedules


def test_linear_schedule_runs_from_beta_start_to_beta_end() -> None:
    s = D.make_schedule("linear", 1000, 1e-4, 0.02)
    assert s.timesteps == 1000
    assert s.betas.dtype == np.float64
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    np.testing.assert_allclose(np.diff(s.betas), (0.02 - 1e-4) / 999)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alphas_cumprod_decreases_from_almost_one_to_almost_zero(kind: str) -> None:
    s = D.make_schedule(kind, 1000)
    abar = s.alphas_cumprod
    assert np.all(np.diff(abar) < 0)
    assert 0.999 < abar[0] < 1.0
    assert abar[-1] < 1e-4
    np.testing.assert_allclose(abar, np.cumprod(1.0 - s.betas))
    np.testing.assert_allclose(s.alphas_cumprod_prev, np.concatenate([[1.0], abar[:-1]]))


def test_cosine_schedule_follows_the_squared_cosine_and_clips_betas() -> None:
    T, s_ = 1000, 0.008
    s = D.make_schedule("cosine", T)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert s.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert np.all(s.betas > 0) and np.all(s.betas <= 0.999)
    assert s.betas[-1] == pytest.approx(0.999)


def test_posterior_variance_is_beta_tilde_and_zero_at_the_first_step() -> None:
    s = small_schedule()
    expected = s.betas[1:] * (1 - s.alphas_cumprod[:-1]) / (1 - s.alphas_cumprod[1:])
    np.testing.assert_allclose(s.posterior_variance[1:], expected)
    assert s.posterior_variance[0] == 0.0
    assert np.all(np.isfinite(s.posterior_log_variance_clipped))


def test_schedule_arrays_are_read_only() -> None:
    with pytest.raises(ValueError):
        small_schedule().betas[0] = 0.5


def test_schedule_from_config_uses_the_ddpm_section() -> None:
    s = D.schedule_from_config(DDPMConfig(schedule="linear", timesteps=50, beta_start=1e-3, beta_end=0.05))
    assert s.timesteps == 50 and s.betas[0] == pytest.approx(1e-3) and s.betas[-1] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("sigmoid", 10), "sigmoid"),
        (("linear", 1), "timesteps=1"),
        (("linear", 10, 0.1, 0.01), "beta"),
    ],
)
def test_bad_schedule_parameters_raise_config_error(args: tuple, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        D.make_schedule(*args)


# --------------------------------------------------------------------------------------------------
# Forward process


def test_q_sample_matches_the_closed_form() -> None:
    s = D.make_schedule("linear", 1000)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, SHAPE).astype("float32")
    eps = rng.standard_normal(SHAPE).astype("float32")
    t = np.array([0, 499, 999], "int32")
    abar = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    expected = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    got = D.q_sample(s, x0, ops.convert_to_tensor(t), eps)
    assert got.dtype == "float32"
    np.testing.assert_allclose(to_np(got), expected, rtol=1e-5, atol=1e-6)


def test_predict_x0_inverts_q_sample() -> None:
    s = small_schedule()
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, SHAPE).astype("float32")
    eps = rng.standard_normal(SHAPE).astype("float32")
    t = np.array([0, 7, 19], "int32")
    x_t = D.q_sample(s, x0, t, eps)
    np.testing.assert_allclose(to_np(D.predict_x0(s, x_t, t, eps)), x0, atol=1e-5)
    np.testing.assert_allclose(to_np(D.predict_x0(s, x_t[1:2], 7, eps[1:2])), x0[1:2], atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Samplers


def test_ddim_timesteps_are_evenly_spaced_and_descending() -> None:
    np.testing.assert_array_equal(D.ddim_timesteps(20, 20), np.arange(19, -1, -1))
    np.testing.assert_array_equal(D.ddim_timesteps(1000, 5), [999, 749, 500, 250, 0])
    np.testing.assert_array_equal(D.ddim_timesteps(1000, 1), [999])
    for steps in range(1, 21):
        ts = D.ddim_timesteps(20, steps)
        assert len(np.unique(ts)) == steps and np.all(np.diff(ts) < 0)
    with pytest.raises(ConfigError, match="steps=21"):
        D.ddim_timesteps(20, 21)


def test_ddim_with_eta_zero_is_deterministic_and_same_seed_gives_same_images() -> None:
    s = small_schedule()
    a = to_np(D.ddim_sample(linear_eps_fn, s, SHAPE, np.random.default_rng(3), steps=5))
    b = to_np(D.ddim_sample(linear_eps_fn, s, SHAPE, np.random.default_rng(3), steps=5))
    c = to_np(D.ddim_sample(linear_eps_fn, s, SHAPE, np.random.default_rng(4), steps=5))
    assert a.shape == SHAPE and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)

    x_T = np.random.default_rng(5).standard_normal(SHAPE).astype("float32")
    rng = np.random.default_rng(6)
    state = rng.bit_generator.state
    d = to_np(D.ddim_sample(linear_eps_fn, s, SHAPE, rng, steps=5, x_T=x_T))
    e = to_np(D.ddim_sample(linear_eps_fn, s, SHAPE, np.random.default_rng(99), steps=5, x_T=x_T))
    assert rng.bit_generator.state == state, "eta=0 with a given x_T must not draw noise"
    np.testing.assert_array_equal(d, e)


@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_with_eta_one_and_all_steps_is_ddpm_with_posterior_variance(clip_x0: bool) -> None:
    s = small_schedule()
    ddim = D.ddim_sample(
        linear_eps_fn,
        s,
        SHAPE,
        np.random.default_rng(11),
        steps=s.timesteps,
        eta=1.0,
        clip_x0=clip_x0,
    )
    ddpm = D.ddpm_sample(linear_eps_fn, s, SHAPE, np.random.default_rng(11), variance="posterior", clip_x0=clip_x0)
    np.testing.assert_allclose(to_np(ddim), to_np(ddpm), atol=1e-5)
    beta = D.ddpm_sample(linear_eps_fn, s, SHAPE, np.random.default_rng(11), variance="beta")
    assert not np.allclose(to_np(beta), to_np(ddpm), atol=1e-3)


def test_samplers_draw_x_T_then_one_noise_per_step_except_the_last() -> None:
    s = small_schedule()
    for sample in (
        lambda rng: D.ddpm_sample(linear_eps_fn, s, SHAPE, rng),
        lambda rng: D.ddim_sample(linear_eps_fn, s, SHAPE, rng, steps=s.timesteps, eta=1.0),
    ):
        used, expected = np.random.default_rng(2), np.random.default_rng(2)
        sample(used)
        for _ in range(s.timesteps):  # x_T + (T - 1) step noises
            expected.standard_normal(SHAPE)
        assert used.bit_generator.state == expected.bit_generator.state


@pytest.mark.parametrize("steps", [20, 7, 1])
def test_deterministic_ddim_with_the_true_noise_recovers_x0(steps: int) -> None:
    s = small_schedule()
    x0 = known_x0()
    eps = np.random.default_rng(8).standard_normal(SHAPE).astype("float32")
    t_last = np.full(SHAPE[0], s.timesteps - 1, "int32")
    x_T = D.q_sample(s, x0, t_last, eps)
    out = D.ddim_sample(oracle_eps_fn(s, x0), s, SHAPE, np.random.default_rng(0), steps=steps, x_T=x_T)
    np.testing.assert_allclose(to_np(out), x0, atol=1e-4)


def test_ddpm_with_the_true_noise_and_no_variance_left_lands_on_x0() -> None:
    # At the last step (t = 0) DDPM adds no noise and its mean is exactly the x0 prediction.
    s = small_schedule()
    x0 = known_x0()
    out = D.ddpm_sample(oracle_eps_fn(s, x0), s, SHAPE, np.random.default_rng(0))
    np.testing.assert_allclose(to_np(out), x0, atol=1e-4)


def test_samplers_report_progress_after_every_step() -> None:
    s = small_schedule(timesteps=6)
    calls: list[tuple[int, int]] = []
    D.ddpm_sample(
        linear_eps_fn,
        s,
        SHAPE,
        np.random.default_rng(0),
        progress=lambda i, n: calls.append((i, n)),
    )
    assert calls == [(i, 6) for i in range(1, 7)]
    calls.clear()
    D.ddim_sample(
        linear_eps_fn,
        s,
        SHAPE,
        np.random.default_rng(0),
        steps=3,
        progress=lambda i, n: calls.append((i, n)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_clip_x0_keeps_the_sample_in_the_image_range() -> None:
    s = small_schedule()
    wild = lambda x_t, t: -5.0 * x_t  # noqa: E731  predicts far-out x0
    out = to_np(D.ddim_sample(wild, s, SHAPE, np.random.default_rng(0), steps=4, clip_x0=True))
    assert np.all(np.abs(out) <= 1.0 + 1e-6)


def test_x_T_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="x_T"):
        D.ddim_sample(
            linear_eps_fn,
            small_schedule(),
            SHAPE,
            np.random.default_rng(0),
            steps=2,
            x_T=np.zeros((1, 4, 4, 2)),
        )


# --------------------------------------------------------------------------------------------------
# DDIM coefficients


def test_ddim_plan_visits_the_grid_and_its_last_step_lands_on_the_clean_image() -> None:
    s = small_schedule()
    grid = D.ddim_timesteps(20, 4)
    plan = D.ddim_plan(s, grid)
    assert grid.tolist() == [19, 13, 6, 0]
    np.testing.assert_allclose(plan.sqrt_abar_next[:-1], np.sqrt(s.alphas_cumprod[grid[1:]]))
    assert plan.sqrt_abar_next[-1] == 1.0 and plan.direction[-1] == 0.0 and plan.sigma[-1] == 0.0
    assert plan.at(1).x_coef == float(plan.x_coef[1])
    # The unclipped, folded form is the clipped form when nothing is clipped.
    x = np.full((1, 2, 2, 1), 0.1, "float32")
    eps = np.full((1, 2, 2, 1), 0.05, "float32")
    folded = to_np(D.ddim_update(x, eps, plan.at(1), clip_x0=False))
    unfolded = to_np(D.ddim_update(x, eps, plan.at(1), clip_x0=True))
    np.testing.assert_allclose(folded, unfolded, rtol=1e-5)


def test_ddim_update_is_one_function_for_scalar_and_per_example_coefficients() -> None:
    s = small_schedule()
    t, t_next = np.array([19, 10, 3]), np.array([13, -1, 0])
    per_example = D.ddim_coefficients(s, t, t_next).map(lambda v: v.reshape(-1, 1, 1, 1))
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    eps = np.random.default_rng(1).standard_normal(SHAPE).astype("float32")
    together = to_np(D.ddim_update(x, eps, per_example.map(lambda v: v.astype("float32")), True))
    for i in range(3):
        one = D.ddim_coefficients(s, t[i : i + 1], t_next[i : i + 1]).at(0)
        alone = to_np(D.ddim_update(x[i], eps[i], one, True))
        np.testing.assert_allclose(together[i], alone, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Guidance, through the production sampler (ddpm.generate)


class CountingPredictor:
    """A conditional stand-in for the compiled U-Net: eps = 0.1 x_t (label + 1); records calls."""

    def __init__(self) -> None:
        self.labels: list[np.ndarray] = []

    def __call__(self, x_t, t, label):
        self.labels.append(to_np(label))
        return 0.1 * x_t * ops.reshape(ops.cast(label, "float32") + 1.0, (-1, 1, 1, 1))


def conditional_family(num_classes: int = 10):
    from imagegen.config import load_params
    from imagegen.training.families import build_family

    params = load_params(
        None,
        [
            "ddpm.base_channels=8",
            "ddpm.groups=4",
            "ddpm.timesteps=20",
            "ddpm.conditional=true",
        ],
    )
    return build_family("ddpm", params, (4, 4, 2), num_classes)


@pytest.mark.parametrize(("scale", "passes"), [(0.0, 1), (1.0, 1), (3.0, 2)])
def test_guided_sampling_extrapolates_from_the_unconditional_prediction(scale: float, passes: int) -> None:
    """generate() with guidance s samples with eps_u + s (eps_c - eps_u): two passes of batch B per
    step (conditional, then the null label), one when s is 1 (conditional) or 0 (unconditional)."""
    from imagegen.training.families import ddpm

    family = conditional_family()
    labels = np.array([1, 2, 3], "int32")
    predict = CountingPredictor()
    settings = SamplerSettings(steps=4, guidance_scale=scale)
    got = ddpm.generate(family, 3, np.random.default_rng(0), labels, settings=settings, predict=predict)
    assert len(predict.labels) == 4 * passes
    step_labels = predict.labels[:passes]
    expected_labels = {0.0: [[10] * 3], 1.0: [labels], 3.0: [labels, [10] * 3]}[scale]
    for seen, want in zip(step_labels, expected_labels, strict=True):
        np.testing.assert_array_equal(seen, want)

    cond = 0.1 * (labels + 1.0).reshape(-1, 1, 1, 1)
    uncond = 0.1 * 11.0

    def by_hand(x_t, t):
        return x_t * ops.convert_to_tensor((uncond + scale * (cond - uncond)).astype("float32"))

    s = D.schedule_from_config(DDPMConfig(**family.spec["ddpm"]))
    expected = D.ddim_sample(by_hand, s, (3, 4, 4, 2), np.random.default_rng(0), 4, clip_x0=True)
    np.testing.assert_allclose(got, np.clip(to_np(expected), -1, 1), rtol=1e-5, atol=1e-6)


def test_ddim_samples_from_a_tiny_conditional_unet_with_guidance() -> None:
    from imagegen.training.families import ddpm

    rng = np.random.default_rng(0)
    out = ddpm.generate(conditional_family(), 2, rng, settings=SamplerSettings(steps=3, guidance_scale=2.0))
    assert out.shape == (2, 4, 4, 2) and np.all(np.isfinite(out))
