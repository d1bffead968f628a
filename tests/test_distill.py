"""Teacher-student distillation, as a specification.

* Explicit DDIM grids: a student samples on its own grid, which ``ddim_sample`` takes as ``timesteps``.
* Progressive distillation (Salimans & Ho 2022): one student DDIM step lands where two teacher steps land;
  training lowers the student's error against that target; each round halves the steps on nested grids.
* The student is a first-class model: saved, loaded and sampled on its own grid by ``imagegen sample``.
* Architecture distillation: a student of ``distill.width_factor`` the teacher's width has about the square of
  that factor in parameters and learns to match the teacher.
* Bad input stops with a message naming the path, the family or the key.

Tiny everything (8x8 digits, a one-level 8-channel U-Net with T = 50, a few dozen steps, no XLA for training),
so the whole file runs in about a minute on two CPU cores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops
from typer.testing import CliRunner

from imagegen.artifact import load_model
from imagegen.cli import app
from imagegen.config import DistillConfig, load_params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import ProcessedDataset
from imagegen.distill import cost
from imagegen.distill.architecture import build_architecture, student_width
from imagegen.distill.progressive import (
    build_progressive,
    next_round,
    plan_rounds,
    student_grid,
    target_coefficients,
    x0_target,
)
from imagegen.distill.setup import evaluate_loss
from imagegen.errors import ConfigError, DataError
from imagegen.models import diffusion as D
from imagegen.sampling import generate_images, resolve_settings
from imagegen.stages.distill import run_distill
from imagegen.stages.ingest import run_ingest
from imagegen.stages.train import run_train
from imagegen.training.loop import Trainer

T = 50
TINY = [
    "tracking.enabled=false",
    "data.image_size=8",
    "dcgan.base_filters=8",
    "dcgan.latent_dim=16",
    "dcgan.steps=20",
    "vae.base_filters=8",
    "vae.latent_dim=8",
    "ddpm.base_channels=8",
    "ddpm.groups=4",
    "ddpm.channel_mults=[1]",
    f"ddpm.timesteps={T}",
    "ddpm.steps=40",
    "ddpm.learning_rate=0.003",
    "train.batch_size=32",
    "train.jit_compile=false",
    "train.log_every=5",
    "train.checkpoint_every=1000",
    "train.sample_every=1000",
    "train.grid_size=4",
    "sample.steps=5",
    "distill.start_steps=4",
    "distill.target_steps=1",
    "distill.steps_per_round=8",
    "distill.architecture_steps=8",
    "distill.compare_n=16",
    "distill.speed_n=16",
    "evaluate.batch_size=64",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distill")


def params_for(root: Path, *extra: str):
    return load_params(
        None,
        [
            *TINY,
            f"data.processed_dir={root / 'data'}",
            f"train.models_dir={root / 'models'}",
            f"train.reports_dir={root / 'reports'}",
            f"train.checkpoints_dir={root / 'checkpoints'}",
            f"evaluate.features_dir={root / 'models' / 'features'}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def digits(root: Path) -> Path:
    return run_ingest(params_for(root))


@pytest.fixture(scope="module")
def ddpm_teacher(root: Path, digits: Path) -> Path:
    """A tiny DDPM trained for 40 steps: poor images, but a non-trivial eps (an untrained U-Net predicts 0)."""
    return run_train(params_for(root), "ddpm", data_dir=digits, show_progress=False)


# --------------------------------------------------------------------------------------------------
# Explicit DDIM grids


def linear_eps_fn(x_t, t):
    return 0.3 * x_t + 0.01 * ops.reshape(ops.cast(t, "float32"), (-1, 1, 1, 1))


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_ddim_with_explicit_timesteps_equal_to_the_default_grid_is_identical(steps: int) -> None:
    s = D.make_schedule("linear", 20, 1e-4, 0.2)
    shape = (2, 4, 4, 1)
    by_steps = D.ddim_sample(linear_eps_fn, s, shape, np.random.default_rng(1), steps=steps, clip_x0=True)
    by_grid = D.ddim_sample(
        linear_eps_fn, s, shape, np.random.default_rng(1), timesteps=D.ddim_timesteps(20, steps).tolist(), clip_x0=True
    )
    np.testing.assert_array_equal(ops.convert_to_numpy(by_steps), ops.convert_to_numpy(by_grid))
    # The grid overrides steps.
    other = D.ddim_sample(
        linear_eps_fn, s, shape, np.random.default_rng(1), steps=2, timesteps=D.ddim_timesteps(20, steps)
    )
    np.testing.assert_allclose(
        ops.convert_to_numpy(other),
        ops.convert_to_numpy(D.ddim_sample(linear_eps_fn, s, shape, np.random.default_rng(1), steps=steps)),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ([], "non-empty"),
        ([5, 9, 0], "strictly decreasing"),
        ([5, 5, 0], "strictly decreasing"),
        ([20, 3], r"\[0, 20\)"),
        ([4, -1], r"\[0, 20\)"),
        ([4.5, 1], "integers"),
    ],
)
def test_a_bad_explicit_grid_is_refused_naming_the_problem(grid, message) -> None:
    s = D.make_schedule("linear", 20, 1e-4, 0.2)
    with pytest.raises(ConfigError, match=message):
        D.ddim_sample(linear_eps_fn, s, (1, 4, 4, 1), np.random.default_rng(0), timesteps=grid)


def test_sampler_settings_come_from_params_then_the_model_then_explicit_choices() -> None:
    params = load_params(None, ["sample.steps=50", "sample.eta=0.3"])
    student = {"sampling": {"sampler": "ddim", "steps": 2, "timesteps": [49, 16], "eta": 0.0}}
    defaults = params.sample
    plain = resolve_settings(defaults)
    assert (plain.steps, plain.eta, plain.timesteps) == (50, 0.3, None)
    own = resolve_settings(defaults, student)
    assert (own.steps, own.timesteps, own.eta) == (2, (49, 16), 0.0)
    assert own.clip_x0 == defaults.clip_x0  # what the model does not say comes from params
    assert resolve_settings(defaults, student, {"steps": None, "eta": None}) == own  # None = not given
    chosen = resolve_settings(defaults, student, {"steps": 8})
    assert (chosen.steps, chosen.timesteps) == (8, None)  # explicit steps: evenly spaced, not the grid
    assert resolve_settings(defaults, student, {"eta": 1.0}).timesteps == (49, 16)
    assert resolve_settings(defaults, student, own.record()) == own  # resolving twice changes nothing
    assert resolve_settings(None, student).guidance_scale == 1.0  # no params: the sampler's own defaults


# --------------------------------------------------------------------------------------------------
# Progressive distillation: grids and target


def test_each_round_halves_the_steps_on_nested_grids() -> None:
    rounds = plan_rounds(1000, 16, 2)
    assert [(len(r.teacher_grid), r.steps) for r in rounds] == [(16, 8), (8, 4), (4, 2)]
    first = D.ddim_timesteps(1000, 16)
    for k, r in enumerate(rounds):
        np.testing.assert_array_equal(r.student_grid, first[:: 2 ** (k + 1)])  # not ddim_timesteps(T, N)
        np.testing.assert_array_equal(r.student_grid, student_grid(r.teacher_grid))
        if k:
            np.testing.assert_array_equal(r.teacher_grid, rounds[k - 1].student_grid)
    # The student's last step starts at G[2N-2] and covers the teacher's G[2N-2] -> G[2N-1] -> clean.
    assert rounds[0].student_grid[-1] == first[-2]
    with pytest.raises(ConfigError, match="target_steps=4 must be below start_steps=4"):
        plan_rounds(1000, 4, 4)


def test_one_student_ddim_step_with_the_target_x0_lands_on_the_teachers_two_step_result() -> None:
    """The teacher's two DDIM steps and the student's one are the sampler's own ddim_update."""
    s = D.make_schedule("linear", 100, 1e-4, 0.02)
    rng = np.random.default_rng(0)
    z_t, eps_1, eps_2 = rng.standard_normal((3, 3, 4, 4, 1))
    t, t1 = np.array([99, 60, 20]), np.array([80, 40, 10])
    t2 = np.array([60, 20, -1])  # -1: the clean image
    per_image = lambda c: c.map(lambda v: v.reshape(-1, 1, 1, 1))  # noqa: E731
    z_1 = D.ddim_update(z_t, eps_1, per_image(D.ddim_coefficients(s, t, t1)), clip_x0=False)
    z_end = D.ddim_update(z_1, eps_2, per_image(D.ddim_coefficients(s, t1, t2)), clip_x0=False)
    c = target_coefficients(s, t, t2, "truncated_snr")
    b = (-1, 1, 1, 1)
    x0 = x0_target(z_t, z_end, c.target_z.reshape(b), c.target_x.reshape(b)).astype(np.float64)
    one = per_image(D.ddim_coefficients(s, t, t2))
    eps_hat = (z_t - one.sqrt_abar * x0) * one.inv_sqrt_one_minus_abar  # the eps that predicts x0
    landed = D.ddim_update(z_t, eps_hat, one, clip_x0=False)
    np.testing.assert_allclose(landed, z_end, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(x0[2], z_end[2], rtol=1e-6)  # ending at the clean image: x0~ = z_t''
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    np.testing.assert_allclose(c.weight, np.maximum(snr, 1.0), rtol=1e-5)
    np.testing.assert_allclose(target_coefficients(s, t, t2, "snr").weight, snr, rtol=1e-5)


def test_one_round_lowers_the_students_one_step_error_against_the_teachers_two_steps(
    root: Path, digits: Path, ddpm_teacher: Path
) -> None:
    """Measured on a fixed held-out batch (test split, fixed noise and steps) before and after 20 steps."""
    params = params_for(root, "distill.learning_rate=0.002")
    teacher = load_model(ddpm_teacher)
    keras.utils.set_random_seed(0)
    dist = build_progressive(
        teacher.family.networks["unet_ema"],
        teacher.family.spec,
        D.ddim_timesteps(T, 4),
        params.distill,
        clip_x0=True,
    )
    ds = ProcessedDataset.open(digits)
    held_out = next(BatchStream(ds.split("test"), 128, seed=5))
    feed = {
        "images": held_out.images,
        "labels": held_out.labels,
        **dist.family.noise(np.random.default_rng(1), held_out.labels),
    }
    teacher_before = [w.copy() for w in teacher.family.networks["unet_ema"].get_weights()]

    before = evaluate_loss(dist.family, feed)
    assert before["loss"] > 0  # the student starts as the teacher, whose 1 step is not its 2 steps
    trainer = Trainer(
        dist.family,
        BatchStream(ds.split("train"), 32, 0),
        params.train,
        seed=0,
        checkpoint_dir=root / "ckpt-a",
        show_progress=False,
    )
    trainer.fit(20)
    after = evaluate_loss(dist.family, feed)

    assert after["loss"] < 0.7 * before["loss"], (before, after)
    for a, b in zip(teacher_before, teacher.family.networks["unet_ema"].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the teacher is frozen


def test_the_next_round_reuses_the_compiled_step_and_trains_as_a_fresh_round_would(
    root: Path, digits: Path, ddpm_teacher: Path
) -> None:
    """Round 2 on round 1's networks (next_round) equals round 2 built anew from round 1's student, without a
    second trace of the train step, and the caller's teacher network is never written."""
    params = params_for(root, "distill.learning_rate=0.002")
    teacher = load_model(ddpm_teacher)
    original = [w.copy() for w in teacher.family.networks["unet_ema"].get_weights()]
    ds = ProcessedDataset.open(digits)
    grid = D.ddim_timesteps(T, 4)

    def fit(family, stepper=None, name="a") -> Trainer:
        trainer = Trainer(
            family,
            BatchStream(ds.split("train"), 16, 0),
            params.train,
            seed=0,
            checkpoint_dir=root / f"ckpt-reuse-{name}",
            show_progress=False,
            stepper=stepper,
        )
        trainer.fit(4)
        return trainer

    keras.utils.set_random_seed(0)
    first = build_progressive(teacher.family.networks["unet_ema"], teacher.family.spec, grid, params.distill, True)
    round_1 = fit(first.family, name="r1")
    round_1_student = first.student.networks["unet_ema"]
    fresh = build_progressive(round_1_student, first.student.spec, grid[::2], params.distill, True)
    reused = next_round(first, grid[::2], params.distill, True, "r2")
    assert reused.family.spec["distill"]["teacher_grid"] == [int(t) for t in grid[::2]]
    assert reused.family.networks["teacher"] is first.family.networks["teacher"]  # nothing new was built

    round_2 = fit(reused.family, stepper=round_1.stepper, name="r2")
    fit(fresh.family, name="fresh")
    assert round_2.stepper is round_1.stepper
    if keras.backend.backend() == "tensorflow":
        assert round_1.stepper._step_fn.experimental_get_tracing_count() == 1
    trained_weights = (f.student.networks["unet_ema"].get_weights() for f in (reused, fresh))
    for a, b in zip(*trained_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(original, teacher.family.networks["unet_ema"].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_reset_optimizer_equals_a_new_one_built_on_the_same_variables() -> None:
    from imagegen.distill.setup import reset_optimizer

    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    used = keras.optimizers.Adam(0.01, global_clipnorm=1.0)
    used.build(layer.trainable_variables)
    for _ in range(3):
        used.apply([keras.ops.ones(v.shape) for v in layer.trainable_variables], layer.trainable_variables)
    assert int(used.iterations) == 3
    reset_optimizer(used)
    new = keras.optimizers.Adam(0.01, global_clipnorm=1.0)
    new.build(layer.trainable_variables)
    assert [v.name for v in used.variables] == [v.name for v in new.variables]
    for a, b in zip(used.variables, new.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------------
# The progressive stage and the student as a model


@pytest.fixture(scope="module")
def progressive(root: Path, digits: Path, ddpm_teacher: Path):
    """run_distill from 4 to 1 steps (rounds 4 -> 2 -> 1), tracked in a temporary SQLite MLflow store."""
    params = params_for(root, "tracking.enabled=true", f"tracking.uri=sqlite:///{root / 'mlflow.db'}")
    final = run_distill(params, ddpm_teacher, "progressive", data_dir=digits, show_progress=False)
    return params, final


def test_the_stage_writes_one_model_per_round_a_final_copy_and_a_report(root: Path, progressive, ddpm_teacher) -> None:
    params, final = progressive
    out = root / "models" / "ddpm_student_progressive"
    assert final == out / "final"
    assert sorted(p.name for p in out.iterdir()) == [".imagegen-output", "final", "round_1_steps_2", "round_2_steps_1"]
    meta = json.loads((final / "model.json").read_text())
    grid = D.ddim_timesteps(T, 4)
    assert meta["sampling"] == {"sampler": "ddim", "steps": 1, "timesteps": [int(grid[0])], "eta": 0.0}
    assert meta["distillation"]["round"] == 2 and meta["distillation"]["teacher_steps"] == 2
    assert meta["distilled_from"]["path"] == str(out / "round_1_steps_2")
    first = json.loads((out / "round_1_steps_2" / "model.json").read_text())
    assert first["sampling"]["timesteps"] == grid[::2].tolist()
    assert first["distilled_from"]["path"] == str(ddpm_teacher)
    assert first["distilled_from"]["dataset"] == json.loads((ddpm_teacher / "model.json").read_text())["dataset"]

    report = json.loads((root / "reports" / "distill_ddpm_progressive" / "metrics.json").read_text())
    assert report["teacher"]["steps"] == params.sample.steps and report["teacher_start"]["steps"] == 4
    assert [r["steps"] for r in report["rounds"].values()] == [2, 1]
    student = report["student"]
    assert student["steps"] == 1 and student["parameters"] == report["teacher"]["parameters"]
    assert student["macs_per_image"] * 4 == report["teacher_start"]["macs_per_image"]
    assert 0 < student["ssim_to_teacher"] <= 1 and "images_per_sec" not in student
    run = json.loads((root / "reports" / "distill_ddpm_progressive" / "run.json").read_text())
    assert run["student"]["images_per_sec"] > 0  # measured figures live outside the tracked report
    assert any("imagegen train-features" in note for note in report["notes"])  # no feature model: no FID
    assert "fid" not in student
    assert (root / "reports" / "distill_ddpm_progressive" / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_mlflow_has_a_parent_run_linked_to_the_teacher_and_a_child_run_per_round(
    root: Path, progressive, ddpm_teacher
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imagegen").experiment_id])
    parent = next(r for r in runs if r.data.tags["mlflow.runName"] == "distill-ddpm-progressive")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.data.tags["teacher.path"] == str(Path(ddpm_teacher).resolve())
    assert sorted(r.data.tags["distill.steps"] for r in children) == ["1", "2"]
    final_meta = json.loads((progressive[1] / "model.json").read_text())
    # a student finds its run by its weights digest; the teacher's, by the digest it was distilled from
    assert final_meta["weights_digest"] in {r.data.tags.get("weights_digest") for r in children}
    teacher_digest = json.loads((Path(ddpm_teacher) / "model.json").read_text())["weights_digest"]
    assert parent.data.tags["teacher.weights_digest"] == teacher_digest


def test_a_distilled_student_samples_the_same_images_for_the_same_seed_on_its_own_grid(root: Path, progressive) -> None:
    _, final = progressive
    student = root / "models" / "ddpm_student_progressive" / "round_1_steps_2"  # 2 steps: its grid is not DDIM's
    grid = json.loads((student / "model.json").read_text())["sampling"]["timesteps"]
    assert grid != D.ddim_timesteps(T, 2).tolist()

    a, _ = generate_images(student, 6, seed=3, show_progress=False)  # by default: its own grid
    own, _ = generate_images(student, 6, seed=3, show_progress=False, sampler="ddim", timesteps=grid)
    even, _ = generate_images(student, 6, seed=3, show_progress=False, steps=2)  # explicit steps: DDIM's grid
    assert a.shape == (6, 8, 8, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, own)  # same seed, same grid: the same images (after a save and a load)
    assert not np.array_equal(a, even)

    out = root / "cli-sample"
    result = CliRunner().invoke(
        app,
        [
            "sample",
            "--model",
            str(student),
            "--out",
            str(out),
            "--n",
            "6",
            "--seed",
            "3",
            "-S",
            "tracking.enabled=false",
        ],
    )
    assert result.exit_code == 0, result.output
    with np.load(out / "samples.npz") as npz:
        np.testing.assert_array_equal(npz["images"], a)  # the CLI samples a student on its own grid too


# --------------------------------------------------------------------------------------------------
# Architecture distillation


@pytest.mark.parametrize(("family_name", "bound"), [("ddpm", 0.35), ("vae", 0.45), ("dcgan", 0.45)])
def test_a_half_width_student_has_about_a_quarter_of_the_parameters(root: Path, family_name: str, bound: float) -> None:
    """Width 0.5: conv weights fall 4x; the dense projections next to the latent fall only 2x (hence 0.45 for the
    DCGAN and VAE), and the DDPM U-Net, all convs, stays under 0.35x."""
    from imagegen.training.families import build_family

    params = params_for(root)
    teacher = build_family(family_name, params, (8, 8, 1), 10)
    dist = build_architecture(teacher, DistillConfig(width_factor=0.5))
    ratio = cost.parameters(dist.student) / cost.parameters(teacher)
    assert ratio <= bound, ratio
    macs = cost.macs_per_image(dist.student), cost.macs_per_image(teacher)
    assert macs[0] < 0.5 * macs[1], macs
    assert set(dist.student.networks) == set(teacher.networks)  # a complete model of the family
    assert student_width(8, 0.5, multiple=4) == 4 and student_width(8, 0.1, multiple=4) == 4


def test_architecture_distillation_of_a_dcgan_trains_a_narrow_student_that_loads_and_samples(
    root: Path, digits: Path
) -> None:
    """With the evaluation feature model present: feature matching on, FID/KID reported for both."""
    from imagegen.stages.train_features import run_train_features

    params = params_for(
        root,
        "evaluate.feature_epochs=1",
        "evaluate.feature_width=8",
        "evaluate.feature_dim=16",
        "evaluate.n_samples=64",
        "evaluate.kid_subset_size=32",
        "evaluate.kid_subsets=5",
        "evaluate.max_real=200",
        "distill.architecture_steps=30",
        "distill.architecture_learning_rate=0.005",
    )
    run_train_features(params, data_dir=digits)
    teacher = run_train(params, "dcgan", data_dir=digits, show_progress=False)
    student = run_distill(params, teacher, "architecture", data_dir=digits, show_progress=False)

    assert student == root / "models" / "dcgan_student_architecture"
    loaded = load_model(student)
    assert loaded.name == "dcgan" and loaded.meta["distillation"]["feature_matching"] is True
    assert loaded.meta["spec"]["dcgan"]["base_filters"] == 4
    report = json.loads((root / "reports" / "distill_dcgan_architecture" / "metrics.json").read_text())
    assert report["parameter_ratio"] <= 0.45
    for who in ("teacher", "student"):
        assert np.isfinite(report[who]["fid"]) and 0 <= report[who]["precision"] <= 1
    assert report["student"]["ssim_to_teacher"] > 0
    assert {"feature_mse", "pixel_mse"} <= set(loaded.meta["final_metrics"])
    a, _ = generate_images(student, 4, seed=1, show_progress=False)
    b, _ = generate_images(student, 4, seed=1, show_progress=False)
    np.testing.assert_array_equal(a, b)


def test_architecture_distillation_lowers_the_students_error_against_the_teacher(root: Path, digits: Path) -> None:
    """A VAE student (decoder on shared z, encoder on real images) after 30 steps, on a fixed held-out batch."""
    from imagegen.training.families import build_family

    params = params_for(root)
    keras.utils.set_random_seed(0)
    teacher = build_family("vae", params, (8, 8, 1), 10)  # untrained, but its outputs are not trivial
    dist = build_architecture(teacher, params.distill.model_copy(update={"architecture_learning_rate": 0.005}))
    ds = ProcessedDataset.open(digits)
    held_out = next(BatchStream(ds.split("test"), 128, seed=5))
    feed = {
        "images": held_out.images,
        "labels": held_out.labels,
        **dist.family.noise(np.random.default_rng(1), held_out.labels),
    }
    before = evaluate_loss(dist.family, feed)
    Trainer(
        dist.family,
        BatchStream(ds.split("train"), 32, 0),
        params.train,
        seed=0,
        checkpoint_dir=root / "ckpt-b",
        show_progress=False,
    ).fit(30)
    after = evaluate_loss(dist.family, feed)
    assert after["decoder_mse"] < 0.5 * before["decoder_mse"] and after["encoder_mse"] < 0.5 * before["encoder_mse"]


# --------------------------------------------------------------------------------------------------
# Cost


def test_macs_are_counted_from_layer_shapes() -> None:
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(x)  # 8*8 * 3*3*3 * 4 = 6912
    h = keras.layers.Conv2DTranspose(2, 4, strides=2, padding="same")(h)  # 8*8 * 4*4*4 * 2 = 8192
    out = keras.layers.Dense(5)(h)  # 16*16 * 2 * 5 = 2560
    model = keras.Model(x, out)
    assert cost.count_macs(model, np.zeros((1, 8, 8, 3), np.float32)) == 6912 + 8192 + 2560
    assert cost.count_macs(model, np.zeros((1, 8, 8, 3), np.float32)) == 6912 + 8192 + 2560  # hooks removed


# --------------------------------------------------------------------------------------------------
# Bad input


def test_a_teacher_folder_without_model_json_is_refused_naming_it(root: Path, digits: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path))}.*no model.json"):
        run_distill(params_for(root), tmp_path, "progressive", data_dir=digits)
    result = CliRunner().invoke(
        app, ["distill", "--teacher", str(tmp_path), "--method", "progressive", "-S", "tracking.enabled=false"]
    )
    assert result.exit_code == 2 and "no model.json" in result.output and "Traceback" not in result.output


def test_progressive_distillation_of_a_non_diffusion_teacher_is_refused_naming_the_family(
    root: Path, tmp_path: Path
) -> None:
    fake = tmp_path / "gan"
    fake.mkdir()
    (fake / "model.json").write_text(json.dumps({"family": "dcgan", "format_version": 1}))
    with pytest.raises(ConfigError, match=f"needs a diffusion.*{re.escape(str(fake))}.*'dcgan'"):
        run_distill(params_for(root), fake, "progressive")
    result = CliRunner().invoke(app, ["distill", "--teacher", str(fake), "--method", "quantum"])
    assert result.exit_code == 2 and "quantum" in result.output


def test_progressive_distillation_of_a_caption_conditioned_teacher_is_refused_in_one_line_before_any_work(
    tmp_path: Path,
) -> None:
    captions = [
        "data.caption_template=a photo of a {class}",
        "ddpm.captions=true",
        "ddpm.steps=1",
        "ddpm.text_width=8",
        "ddpm.text_layers=1",
        "ddpm.text_heads=2",
        "ddpm.cross_attention_resolutions=[8]",
    ]
    params = params_for(tmp_path, *captions)
    teacher = run_train(params, "ddpm", data_dir=run_ingest(params), show_progress=False)
    sets = [a for o in (*TINY, *captions) for a in ("-S", o)]
    out = tmp_path / "student"
    result = CliRunner().invoke(
        app, ["distill", "--teacher", str(teacher), "--method", "progressive", "--out", str(out), *sets]
    )
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output, message
    assert "caption-conditioned" in message and str(teacher) in message, message
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.target_steps=32", "target_steps=32 must not exceed start_steps=16"),
        ("distill.target_steps=3", "power of two"),
        ("distill.width_factor=0", "distill.width_factor"),
        ("distill.width_factor=1.5", "distill.width_factor"),
        ("distill.weighting=l1", "distill.weighting"),
    ],
)
def test_impossible_distill_params_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(None, ["distill.start_steps=16", override])
