"""The training loop, on whatever Keras backend this process runs (TensorFlow by default).

`test_training_jax.py` runs this same file again under KERAS_BACKEND=jax in a subprocess, so every
specification here holds on both backends.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from imagegen.artifact import load_model, save_model
from imagegen.config import Params, load_params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import ProcessedDataset
from imagegen.errors import TrainingError
from imagegen.sampler_settings import SamplerSettings
from imagegen.sampling import generate_images
from imagegen.stages.ingest import run_ingest
from imagegen.stages.sample import run_sample
from imagegen.training.checkpoint import list_checkpoints
from imagegen.training.families import build_family, family_module
from imagegen.training.loop import Trainer

TINY = [
    "tracking.enabled=false",
    "dcgan.base_filters=8",
    "dcgan.latent_dim=16",
    "vae.base_filters=8",
    "vae.latent_dim=8",
    "ddpm.base_channels=8",
    "ddpm.groups=4",
    "ddpm.timesteps=50",
    "ddpm.attention_resolutions=[4]",
    "train.batch_size=32",
    "train.jit_compile=false",
    "train.log_every=1",
    "train.checkpoint_every=6",
    "train.sample_every=1000",
    "train.grid_size=4",
    "sample.steps=5",
]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded dataset at 8x8 (its native size), ingested once for this module."""
    root = tmp_path_factory.mktemp("digits")
    return run_ingest(load_params(None, [*TINY, "data.image_size=8"]), root / "digits")


def params_for(tmp_path: Path, *extra: str) -> Params:
    return load_params(None, [*TINY, f"train.checkpoints_dir={tmp_path / 'ckpt'}", *extra])


def make_trainer(params: Params, family_name: str, data: Path, ckpt: Path) -> Trainer:
    keras.utils.set_random_seed(params.seed)
    ds = ProcessedDataset.open(data)
    family = build_family(family_name, params, ds.image_shape, ds.num_classes)
    stream = BatchStream(ds.split("train"), params.train.batch_size, params.seed)
    module = family_module(family_name)
    return Trainer(
        family,
        stream,
        params.train,
        seed=params.seed,
        checkpoint_dir=ckpt,
        sample_fn=lambda fam, n, rng: module.generate(fam, n, rng, settings=SamplerSettings(steps=params.sample.steps)),
        show_progress=False,
    )


def all_weights(trainer: Trainer) -> dict[str, list[np.ndarray]]:
    trainer.stepper.push()
    return {
        n: [np.asarray(keras.ops.convert_to_numpy(w)) for w in m.weights] for n, m in trainer.family.networks.items()
    }


@pytest.mark.parametrize(
    ("family_name", "metric", "steps", "factor", "extra"),
    [
        ("vae", "loss", 30, 0.9, []),
        ("ddpm", "loss", 40, 0.8, []),
        # A GAN has no single falling loss; early on the generator learns to fool the discriminator,
        # so its (non-saturating) loss falls while the discriminator's hovers near log(4).
        ("dcgan", "g_loss", 30, 0.9, ["dcgan.learning_rate=1e-3"]),
    ],
)
def test_loss_falls_over_a_few_dozen_steps_on_real_digits(
    digits, tmp_path, family_name, metric, steps, factor, extra
) -> None:
    """The last five steps' mean loss is below ``factor`` times the first three steps' mean."""
    trainer = make_trainer(params_for(tmp_path, *extra), family_name, digits, tmp_path / "ckpt")
    result = trainer.fit(steps)
    losses = [row[metric] for row in result.history]
    assert len(losses) == steps
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < factor * np.mean(losses[:3]), losses


def test_jit_compile_auto_is_xla_on_jax_and_gpus_and_graph_mode_for_tensorflow_on_a_cpu() -> None:
    from imagegen.training.precision import accelerator, resolve_jit

    assert load_params(None, []).train.jit_compile == "auto"
    assert resolve_jit("auto", "jax") is True
    assert resolve_jit("auto", "tensorflow") is (accelerator() == "gpu")
    assert resolve_jit(True, "tensorflow") is True and resolve_jit(False, "jax") is False


@pytest.mark.parametrize("family_name", ["ddpm", "dcgan"])
def test_xla_compiled_steps_train_like_the_uncompiled_ones(digits, tmp_path, family_name) -> None:
    """train.jit_compile=true, what auto picks on a GPU: the same losses as without XLA, to float32
    tolerance (the DCGAN also carries BatchNorm statistics through the compiled step)."""
    plain = make_trainer(params_for(tmp_path), family_name, digits, tmp_path / "plain")
    plain.fit(4)
    compiled_params = params_for(tmp_path, "train.jit_compile=true")
    assert compiled_params.train.jit_compile
    compiled = make_trainer(compiled_params, family_name, digits, tmp_path / "xla")
    compiled.fit(4)
    assert len(compiled.history) == len(plain.history) == 4
    for with_xla, without in zip(compiled.history, plain.history, strict=True):
        assert with_xla.keys() == without.keys()
        for key in without:
            if key not in ("step", "images_per_sec", "seconds"):
                assert with_xla[key] == pytest.approx(without[key], rel=1e-3, abs=1e-5), key


def test_resume_continues_exactly_like_an_uninterrupted_run(digits, tmp_path) -> None:
    params = params_for(tmp_path)
    straight = make_trainer(params, "ddpm", digits, tmp_path / "a")
    straight.fit(12)

    first = make_trainer(params, "ddpm", digits, tmp_path / "b")
    first.fit(6)
    resumed = make_trainer(params, "ddpm", digits, tmp_path / "b")
    restored = resumed.resume()
    assert restored is not None and restored.name == "ckpt-000006.h5"
    assert resumed.step == 6
    result = resumed.fit(12)

    assert result.step == 12
    assert resumed.history[0]["step"] == 7  # the next step after the checkpoint, not a repeat
    np.testing.assert_allclose(resumed.history[-1]["loss"], straight.history[-1]["loss"], rtol=1e-5)
    a, b = all_weights(straight), all_weights(resumed)
    assert a.keys() == b.keys() == {"unet", "unet_ema"}  # EMA weights are checkpointed too
    for name in a:
        for wa, wb in zip(a[name], b[name], strict=True):
            np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def test_a_planted_nan_stops_training_and_keeps_the_last_good_checkpoint(digits, tmp_path) -> None:
    trainer = make_trainer(params_for(tmp_path), "vae", digits, tmp_path / "ckpt")
    trainer.fit(6)
    ((step, good),) = list_checkpoints(tmp_path / "ckpt")
    before = good.read_bytes()

    trainer.stepper.push()
    kernel = trainer.family.networks["encoder"].trainable_variables[0]
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    with pytest.raises(TrainingError, match=r"non-finite loss at step 7.*ckpt-000006\.h5"):
        trainer.fit(12)

    assert list_checkpoints(tmp_path / "ckpt") == [(6, good)]
    assert good.read_bytes() == before
    fresh = make_trainer(params_for(tmp_path), "vae", digits, tmp_path / "ckpt")
    fresh.resume()
    assert all(np.isfinite(w).all() for ws in all_weights(fresh).values() for w in ws)


def test_resume_may_train_longer_than_the_first_run_planned(digits, tmp_path) -> None:
    """`imagegen train ddpm --resume -S ddpm.steps=N` continues a finished run: the step count is how long to
    train, not part of the model, so it does not block the resume (and the result is the straight run's)."""
    straight = make_trainer(params_for(tmp_path, "ddpm.steps=12"), "ddpm", digits, tmp_path / "a")
    straight.fit(12)
    make_trainer(params_for(tmp_path, "ddpm.steps=6"), "ddpm", digits, tmp_path / "b").fit(6)

    longer = make_trainer(params_for(tmp_path, "ddpm.steps=12"), "ddpm", digits, tmp_path / "b")
    assert longer.resume() is not None and longer.step == 6
    assert longer.fit(12).step == 12
    np.testing.assert_allclose(longer.history[-1]["loss"], straight.history[-1]["loss"], rtol=1e-5)


def test_resume_refuses_a_checkpoint_of_another_architecture(digits, tmp_path) -> None:
    make_trainer(params_for(tmp_path), "vae", digits, tmp_path / "ckpt").fit(6)
    other = make_trainer(params_for(tmp_path, "vae.latent_dim=4"), "vae", digits, tmp_path / "ckpt")
    with pytest.raises(TrainingError, match="different model"):
        other.resume()


@pytest.mark.parametrize("family_name", ["dcgan", "vae", "ddpm"])
def test_a_saved_model_samples_the_same_images_for_the_same_seed(digits, tmp_path, family_name) -> None:
    trainer = make_trainer(params_for(tmp_path), family_name, digits, tmp_path / "ckpt")
    trainer.fit(2)
    model_dir = save_model(trainer.family, tmp_path / "model", {"step": 2})

    loaded = load_model(model_dir)
    assert loaded.name == family_name
    kwargs = {"sampler": "ddim", "steps": 4, "eta": 0.0} if family_name == "ddpm" else {}
    a, _ = generate_images(model_dir, 6, seed=3, show_progress=False, **kwargs)
    b, _ = generate_images(model_dir, 6, seed=3, show_progress=False, **kwargs)
    c, _ = generate_images(model_dir, 6, seed=4, show_progress=False, **kwargs)
    assert a.dtype == np.uint8 and a.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_run_sample_writes_a_grid_and_an_npz(digits, tmp_path) -> None:
    trainer = make_trainer(params_for(tmp_path), "vae", digits, tmp_path / "ckpt")
    trainer.fit(1)
    model_dir = save_model(trainer.family, tmp_path / "model", {"step": 1})
    out = run_sample(model_dir, tmp_path / "samples", n=10, seed=0, show_progress=False)
    with np.load(out / "samples.npz") as npz:
        assert npz["images"].shape == (10, 8, 8, 1) and npz["images"].dtype == np.uint8
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_train_writes_model_metrics_log_and_samples(digits, tmp_path) -> None:
    from imagegen.stages.train import run_train

    params = params_for(
        tmp_path,
        "vae.steps=6",
        "train.sample_every=3",
        f"train.models_dir={tmp_path / 'models'}",
        f"train.reports_dir={tmp_path / 'reports'}",
    )
    out = run_train(params, "vae", data_dir=digits, show_progress=False)
    assert out == tmp_path / "models" / "vae"
    for name in ("model.json", "encoder.weights.h5", "decoder.weights.h5"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000003.png", "step-000006.png"]
    report = tmp_path / "reports" / "train_vae"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["step"] == 6 and np.isfinite(metrics["final.loss"])
    lines = (report / "train_log.csv").read_text().splitlines()
    assert lines[0].split(",")[0] == "step" and "images_per_sec" not in lines[0] and len(lines) == 7
    # speeds differ run to run: they are kept apart from the tracked report, in run.json
    assert "images_per_sec" not in metrics and "ms_per_step" not in metrics
    assert json.loads((report / "run.json").read_text())["images_per_sec"] > 0


@pytest.mark.parametrize(("family_batch", "trained_batch"), [(None, 32), (8, 8)])
def test_a_family_trains_on_its_own_batch_size_else_on_train_batch_size(
    digits, tmp_path, family_batch: int | None, trained_batch: int
) -> None:
    import h5py

    from imagegen.stages.train import run_train

    given = [] if family_batch is None else [f"vae.batch_size={family_batch}"]
    params = params_for(tmp_path, "vae.steps=2", f"train.reports_dir={tmp_path / 'reports'}", *given)
    run_train(params, "vae", data_dir=digits, out_dir=tmp_path / "vae", show_progress=False)
    ((_, checkpoint),) = list_checkpoints(tmp_path / "ckpt" / "vae")
    with h5py.File(checkpoint) as f:
        assert json.loads(f.attrs["state"])["stream"]["batch_size"] == trained_batch


def test_a_time_budget_stops_with_a_checkpoint_that_resume_continues(digits, tmp_path) -> None:
    params = params_for(tmp_path, "train.max_minutes=1e-6", "train.log_every=3")
    trainer = make_trainer(params, "vae", digits, tmp_path / "ckpt")
    result = trainer.fit(30)
    assert trainer.stopped_early and result.step == 3
    assert [s for s, _ in list_checkpoints(tmp_path / "ckpt")] == [3]
    later = make_trainer(params_for(tmp_path), "vae", digits, tmp_path / "ckpt")
    later.resume()
    assert later.fit(8).step == 8 and not later.stopped_early


def test_training_grids_and_the_collapse_check_share_one_compiled_predictor(digits, tmp_path) -> None:
    """Every sample grid of a diffusion run (and the collapse check after it) reuses one compiled network:
    a new predictor per grid would compile again each time (seconds per grid with XLA on CPU)."""
    import contextvars

    from imagegen.profiling import ENV_VAR, activate_from_env
    from imagegen.stages.train import run_train

    params = params_for(
        tmp_path,
        "ddpm.steps=6",
        "train.sample_every=2",
        f"train.models_dir={tmp_path / 'models'}",
        f"train.reports_dir={tmp_path / 'reports'}",
    )

    def body():
        profile = activate_from_env({ENV_VAR: str(tmp_path / "p.json")}, write_at_exit=False)
        out = run_train(params, "ddpm", data_dir=digits, show_progress=False)
        return profile, out

    profile, out = contextvars.copy_context().run(body)
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"step-00000{i}.png" for i in (2, 4, 6)]
    assert profile.phases["predict.first_call_per_shape"]["count"] == 1  # 3 grids + the check, one shape
