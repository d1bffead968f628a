"""Latent diffusion (the ``ldm`` family): a DDPM U-Net on a trained VAE's scaled latents, decoded by that VAE.

One tiny VAE (8x8 digits, a few steps) and one tiny LDM trained through the real CLI (`imagegen train ldm`)
are shared by the module; the LDM is sampled and exported with parity like every other family.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imagegen.artifact import load_model
from imagegen.cli import app
from imagegen.config import DDPMConfig, load_params
from imagegen.data.loader import to_unit_range
from imagegen.data.processed import ProcessedDataset
from imagegen.errors import ConfigError
from imagegen.stages.ingest import run_ingest
from imagegen.stages.train import run_train
from imagegen.training.families import build_family, ldm, vae

tf = pytest.importorskip("tensorflow")


def tiny(root: Path) -> list[str]:
    """-S overrides: tiny 8x8 models, every output under ``root``."""
    return [
        "tracking.enabled=false",
        "data.image_size=8",
        f"data.processed_dir={root / 'data'}",
        f"train.models_dir={root / 'models'}",
        f"train.reports_dir={root / 'reports'}",
        f"train.checkpoints_dir={root / 'checkpoints'}",
        "train.batch_size=16",
        "train.jit_compile=false",
        "train.checkpoint_every=1000",
        "train.sample_every=1000",
        "train.grid_size=4",
        "vae.base_filters=8",
        "vae.steps=30",
        f"ldm.vae={root / 'models' / 'vae'}",
        "ldm.base_channels=8",
        "ldm.groups=4",
        "ldm.timesteps=50",
        "ldm.steps=3",
        "ldm.batch_size=null",  # train.batch_size
        "sample.steps=2",
        "export.ddpm_steps=2",
        "export.parity_n=4",
        "export.latency_repeats=2",
        "export.tflite_variants=[float32]",
    ]


def cli(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("-S", o)]


@pytest.fixture(scope="module", autouse=True)
def no_project_params(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Run from an empty folder: the CLI reads ./params.yaml when there is one, these tests want the defaults."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"root", "data", "vae", "ldm"}: a VAE trained by the stage, then an LDM trained by `imagegen train ldm`."""
    root = tmp_path_factory.mktemp("ldm")
    params = load_params(None, tiny(root))
    data = run_ingest(params, root / "data" / "digits")
    run_train(params, "vae", show_progress=False)
    result = cli("train", "ldm", *sets(tiny(root)))
    assert result.exit_code == 0, (result.output, result.exception)
    return {"root": root, "data": data, "vae": root / "models" / "vae", "ldm": root / "models" / "ldm"}


def test_the_latent_grid_rule_and_a_latent_it_cannot_map() -> None:
    two_levels = DDPMConfig(channel_mults=[1, 2])
    assert ldm.latent_grid(16, two_levels) == (4, 4, 1)
    assert ldm.latent_grid(32, two_levels) == (4, 4, 2)
    assert ldm.latent_grid(64, two_levels) == (8, 8, 1)
    assert ldm.latent_grid(8, DDPMConfig(channel_mults=[1])) == (2, 2, 2)
    for latent_dim, cfg in ((7, two_levels), (16, DDPMConfig(channel_mults=[1, 2, 2, 2]))):
        with pytest.raises(ConfigError, match="vae.latent_dim") as err:
            ldm.latent_grid(latent_dim, cfg)
        assert len(str(err.value).splitlines()) == 1


def test_the_ldm_carries_the_frozen_vae_and_its_latent_scale(trained) -> None:
    model, vae_model = load_model(trained["ldm"]), load_model(trained["vae"])
    meta = json.loads((trained["ldm"] / "model.json").read_text())
    assert sorted(meta["weights"]) == ["decoder", "encoder", "unet", "unet_ema"]
    assert meta["spec"]["latent_grid"] == [4, 4, 1] and meta["spec"]["vae"] == vae_model.family.spec["vae"]
    for name in ("encoder", "decoder"):  # copied from the VAE, and not trained
        net = model.family.networks[name]
        assert not net.trainable and not net.trainable_weights
        for a, b in zip(net.get_weights(), vae_model.family.networks[name].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    unet_params = sum(int(np.prod(w.shape)) for w in model.family.networks["unet"].trainable_weights)
    assert model.family.trainable_count() == unet_params


def test_scaled_latents_of_the_training_split_have_unit_variance(trained) -> None:
    model = load_model(trained["ldm"])
    train = ProcessedDataset.open(trained["data"]).split("train").images  # uint8
    latents = ldm.encode(model.family, to_unit_range(train))
    assert latents.shape == (len(train), 4, 4, 1)
    assert float(np.std(latents)) == pytest.approx(1.0, abs=1e-3)
    means = ldm.encode_means(load_model(trained["vae"]).family.networks["encoder"], train)
    assert model.family.spec["ldm"]["scale_factor"] == pytest.approx(1.0 / float(np.std(means)), rel=1e-5)


def test_latents_round_trip_through_the_vae_within_its_reconstruction_error(trained) -> None:
    model, vae_model = load_model(trained["ldm"]), load_model(trained["vae"])
    images = to_unit_range(ProcessedDataset.open(trained["data"]).split("test").images[:32])
    through_latents = ldm.decode(model.family, ldm.encode(model.family, images))  # mean -> scale -> unscale -> decode
    direct = vae.reconstruct(vae_model.family, images)
    np.testing.assert_allclose(through_latents, direct, atol=1e-4)
    vae_error = float(np.mean(np.square(direct - images)))
    assert float(np.mean(np.square(through_latents - images))) == pytest.approx(vae_error, rel=1e-3)


def test_the_ldm_samples_and_exports_with_parity(trained) -> None:
    root = trained["root"]
    result = cli("sample", "--model", str(trained["ldm"]), "--out", str(root / "samples"), "--n", "5")
    assert result.exit_code == 0, (result.output, result.exception)
    with np.load(root / "samples" / "samples.npz") as npz:
        images = npz[npz.files[0]]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8

    out = root / "exports" / "ldm"
    args = ["export", "--model", str(trained["ldm"]), "--out", str(out), "--report", str(root / "reports" / "exp")]
    result = cli(*args, *sets(tiny(root)))
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["family"] == "ldm" and metrics["ddpm_steps"] == 2
    assert sorted(metrics["artifacts"]) == ["float32", "savedmodel"]
    assert all(a["passed"] and a["max_abs_error"] <= 2 for a in metrics["artifacts"].values()), metrics

    # The SavedModel takes latent noise x_T (B, 4, 4, 1) and returns decoded uint8 images, as ldm.generate.
    from imagegen.export.parity import keras_images

    fn = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    noise = np.random.default_rng(1).standard_normal((3, 4, 4, 1)).astype(np.float32)
    exported = fn(x_T=tf.constant(noise))["images"].numpy()
    reference = keras_images(load_model(trained["ldm"]), {"x_T": noise}, ddpm_steps=2)
    assert exported.shape == (3, 8, 8, 1)
    assert int(np.max(np.abs(exported.astype(int) - reference.astype(int)))) <= 2


def test_a_blank_ldm_builds_without_data_for_benchmarks(tmp_path) -> None:
    params = load_params(None, tiny(tmp_path))  # scale_factor: null, and no dataset to compute it on
    family = build_family("ldm", params, (8, 8, 1), 10)
    assert sorted(family.networks) == ["decoder", "encoder", "unet", "unet_ema"]
    assert family.spec["latent_grid"] == [4, 4, 1] and ldm.scale_of(params.ldm) == 1.0


def test_train_ldm_without_a_trained_vae_fails_in_one_line(trained, tmp_path) -> None:
    missing = tmp_path / "no_vae"
    overrides = [*tiny(trained["root"]), f"ldm.vae={missing}", f"train.models_dir={tmp_path / 'models'}"]
    result = cli("train", "ldm", *sets(overrides))
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output, message
    assert str(missing) in message and "imagegen train vae" in message, message
    assert not (tmp_path / "models" / "ldm").exists()


def test_architecture_distillation_of_an_ldm_is_refused_in_one_line_before_any_work(trained, tmp_path) -> None:
    out = tmp_path / "student"
    overrides = [*tiny(trained["root"]), f"train.reports_dir={tmp_path / 'reports'}"]
    result = cli("distill", "--teacher", str(trained["ldm"]), "--method", "architecture", "--out", str(out),
                 *sets(overrides))  # fmt: skip
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output, message
    assert "--method architecture" in message and str(trained["ldm"]) in message and "'ldm'" in message, message
    assert not out.exists() and not (tmp_path / "reports").exists()
