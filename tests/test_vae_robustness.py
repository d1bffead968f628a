"""The VAE on dark images (a few bright strokes on black, as MNIST-like data): the decoder must not saturate
black, the collapse check must say which way samples collapsed, and the LDM must refuse a collapsed VAE.

The data is made here: 16x16 black images, each with one short bright stroke (about 2% of the pixels lit).
With the default width and learning rate, a decoder trained on the squared error of its tanh output is driven
into the tanh's flat tail within a few dozen steps and stays black; the default (Bernoulli, on the logits)
likelihood keeps learning.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from imagegen.artifact import load_model
from imagegen.cli import app
from imagegen.config import load_params
from imagegen.data.processed import Dataset, Split, write_processed
from imagegen.stages.train import run_train
from imagegen.training.collapse import sample_health, sample_problems
from imagegen.training.families import vae

SIZE = 16
STEPS = 60


def strokes(n: int, seed: int) -> np.ndarray:
    """``n`` uint8 images (n, 16, 16, 1): black, one bright horizontal or vertical stroke of 3-6 pixels each."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    for image in images:
        r, c = rng.integers(2, SIZE - 2, 2)
        half = int(rng.integers(3, 7)) // 2
        if rng.random() < 0.5:
            image[r, max(0, c - half) : c + half + 1] = 255
        else:
            image[max(0, r - half) : r + half + 1, c] = 255
    return images


@pytest.fixture(scope="module")
def dark_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A processed dataset of stroke images (256 train, 32 test)."""
    out = tmp_path_factory.mktemp("strokes") / "data"
    splits = {
        "train": Split(strokes(256, 0), np.zeros(256, np.int64)),
        "test": Split(strokes(32, 1), np.zeros(32, np.int64)),
    }
    write_processed(Dataset("strokes", splits, ["stroke"], "synthetic"), out)
    return out


def overrides(root: Path, *extra: str) -> list[str]:
    """A default-width VAE (the width and learning rate that saturated), short training, outputs under ``root``."""
    return [
        "tracking.enabled=false",
        f"data.image_size={SIZE}",
        "train.batch_size=32",
        "train.jit_compile=false",
        "train.log_every=5",
        "train.checkpoint_every=1000",
        "train.sample_every=1000",
        "train.grid_size=16",
        f"vae.steps={STEPS}",
        f"train.checkpoints_dir={root / 'checkpoints'}",
        f"train.models_dir={root / 'models'}",
        f"train.reports_dir={root / 'reports'}",
        *extra,
    ]


def train_vae(root: Path, data: Path, *extra: str) -> Path:
    return run_train(load_params(None, overrides(root, *extra)), "vae", data_dir=data, show_progress=False)


def decoder_pre_activations(model_dir: Path, n: int = 64) -> np.ndarray:
    """The decoder's output before its tanh for z ~ N(0, I)."""
    decoder = load_model(model_dir).family.networks["decoder"]
    inner = keras.Model(decoder.input, decoder.get_layer("to_image").output)
    latent_dim = int(decoder.input.shape[-1])
    z = np.random.default_rng(0).standard_normal((n, latent_dim)).astype("float32")
    return np.asarray(keras.ops.convert_to_numpy(inner(z)))


def prior_samples(model_dir: Path, n: int = 64) -> np.ndarray:
    return vae.generate(load_model(model_dir).family, n, np.random.default_rng(0))


@pytest.fixture(scope="module")
def black_vae(tmp_path_factory: pytest.TempPathFactory, dark_data: Path) -> Path:
    """A VAE trained with the tanh squared-error likelihood on the dark data: its decoder saturated black."""
    return train_vae(tmp_path_factory.mktemp("gaussian"), dark_data, "vae.likelihood=gaussian")


def test_the_default_vae_decoder_does_not_saturate_black_on_dark_images(tmp_path: Path, dark_data: Path) -> None:
    model = train_vae(tmp_path, dark_data)
    pre = decoder_pre_activations(model)
    samples = prior_samples(model)
    real_brightness = float(np.mean(strokes(256, 0)) / 255.0)
    assert float(pre.mean()) > -5.0, f"decoder output saturated: mean pre-tanh activation {pre.mean():.2f}"
    assert float(np.mean((samples + 1) / 2)) > 0.25 * real_brightness
    collapse = json.loads((model / "model.json").read_text())["collapse"]
    assert not [p for p in collapse["problems"] if "black" in p], collapse["problems"]


def test_a_tanh_squared_error_decoder_saturates_black_on_the_same_images_and_is_flagged(black_vae: Path) -> None:
    """The trigger the default likelihood is robust to: the same data and settings with the old likelihood."""
    pre = decoder_pre_activations(black_vae)
    assert float(pre.mean()) < -5.0 and float(np.mean((prior_samples(black_vae) + 1) / 2)) < 0.005
    collapse = json.loads((black_vae / "model.json").read_text())["collapse"]
    assert collapse["warning"] and any(p.startswith("samples are nearly all black") for p in collapse["problems"])
    assert not [p for p in collapse["problems"] if "mean image" in p], collapse["problems"]


# --------------------------------------------------------------------------------------------------
# Which way samples collapsed


def real_images(n: int = 32, seed: int = 0) -> np.ndarray:
    """Images in [-1, 1] with structure and spread: a bright square at a random place on a noisy grey field."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-0.6, 0.0, (n, 8, 8, 1))
    for image in images:
        r, c = rng.integers(0, 5, 2)
        image[r : r + 3, c : c + 3] = 1.0
    return images


def problems_of(samples: np.ndarray) -> list[str]:
    return sample_problems(sample_health(samples, real_images()), 0.1, 0.1)


def test_black_samples_are_reported_as_black_not_as_the_mean_image() -> None:
    black = np.full((16, 8, 8, 1), -1.0) + np.random.default_rng(1).uniform(0, 0.01, (16, 8, 8, 1))
    problems = problems_of(black)
    assert len(problems) == 1 and problems[0].startswith("samples are nearly all black (mean pixel 0.00"), problems


def test_white_samples_are_reported_as_white() -> None:
    problems = problems_of(np.ones((16, 8, 8, 1)))
    assert len(problems) == 1 and problems[0].startswith("samples are nearly all white"), problems


def test_flat_grey_samples_are_reported_as_flat() -> None:
    grey = np.linspace(-0.5, 0.5, 16)[:, None, None, None] * np.ones((16, 8, 8, 1))
    problems = problems_of(grey)
    assert len(problems) == 1 and problems[0].startswith("samples are flat (per-image pixel spread"), problems


def test_samples_at_the_real_mean_image_are_reported_as_the_mean_image() -> None:
    real = real_images()
    near_mean = real.mean(axis=0) + np.random.default_rng(2).normal(0, 0.01, (16, 8, 8, 1))
    problems = sample_problems(sample_health(near_mean, real), 0.1, 0.1)
    assert len(problems) == 1 and problems[0].startswith("samples tend to the mean image"), problems


def test_one_repeated_real_looking_image_is_reported_as_identical_not_the_mean() -> None:
    problems = problems_of(np.repeat(real_images(1, seed=5), 16, axis=0))
    assert len(problems) == 1 and problems[0].startswith("samples are nearly identical"), problems


def test_varied_real_looking_samples_have_no_problem() -> None:
    assert problems_of(real_images(16, seed=3)) == []


# --------------------------------------------------------------------------------------------------
# A family built on a trained model refuses a collapsed one


def test_train_ldm_refuses_a_collapsed_vae_in_one_line_before_training(
    black_vae: Path, dark_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: the defaults plus these overrides
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sets = overrides(tmp_path, f"ldm.vae={black_vae}", "ldm.steps=2", "ldm.batch_size=null")
    args = ["train", "ldm", "--data", str(dark_data), *(a for s in sets for a in ("-S", s))]
    result = CliRunner().invoke(app, args)
    message = result.stderr.strip()
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(message.splitlines()) == 1 and "Traceback" not in result.output, message
    assert f"ldm.vae={black_vae}" in message and "collapsed VAE" in message, message
    assert "samples are nearly all black" in message and "imagegen train vae" in message, message
    assert not (tmp_path / "models").exists() and not (tmp_path / "checkpoints").exists()
