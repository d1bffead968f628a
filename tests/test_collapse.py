"""Collapse caught where it happens: KL per image for the VAE, sample health for every family."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import numpy as np
import pytest

from imagegen.config import load_params
from imagegen.models.vae import free_bits_kl
from imagegen.stages.ingest import run_ingest
from imagegen.training.collapse import KLWatch, sample_health, sample_problems

TINY = [
    "tracking.enabled=false",
    "data.image_size=8",
    "vae.base_filters=8",
    "vae.latent_dim=8",
    "train.batch_size=32",
    "train.jit_compile=false",
    "train.log_every=1",
    "train.checkpoint_every=100",
    "train.sample_every=100",
    "train.grid_size=16",
]


def real_like(n: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, 1))


def test_identical_samples_have_zero_diversity_and_are_flagged() -> None:
    same = np.repeat(real_like(1), 16, axis=0)
    health = sample_health(same, real_like())
    assert health["diversity_ratio"] == pytest.approx(0.0, abs=1e-6)
    assert any("nearly identical" in p for p in sample_problems(health, 0.1, 0.1))


def test_flat_samples_have_zero_contrast_and_are_flagged() -> None:
    flat = np.linspace(-1, 1, 16)[:, None, None, None] * np.ones((16, 8, 8, 1))
    health = sample_health(flat, real_like())
    assert health["contrast_ratio"] == pytest.approx(0.0, abs=1e-9) and health["diversity_ratio"] > 0.1
    assert [p for p in sample_problems(health, 0.1, 0.1) if "flat" in p]


def test_non_finite_samples_are_flagged() -> None:
    broken = real_like()
    broken[0, 0, 0, 0] = np.nan
    problems = sample_problems(sample_health(broken, real_like(seed=1)), 0.1, 0.1)
    assert problems and "not finite" in problems[0]


def test_real_looking_samples_pass() -> None:
    assert sample_problems(sample_health(real_like(seed=1), real_like()), 0.1, 0.1) == []


def test_free_bits_leave_dimensions_below_the_floor_unpenalised() -> None:
    per_dim = keras.ops.convert_to_tensor(np.array([0.01, 0.5, 2.0], dtype="float32"))
    assert float(free_bits_kl(per_dim, 0.0)) == pytest.approx(2.51)
    assert float(free_bits_kl(per_dim, 0.1)) == pytest.approx(0.1 + 0.5 + 2.0)


def test_kl_watch_warns_once_after_the_start_step(caplog: pytest.LogCaptureFixture) -> None:
    watch = KLWatch(threshold=1.0, start_step=5)
    with caplog.at_level(logging.WARNING, logger="imagegen"):
        for step, kl in [(1, 0.0), (4, 0.1), (5, 3.0), (6, 0.5), (7, 0.4)]:
            watch(step, {"kl": kl})
    assert watch.warned_at == 6
    assert [r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()] == [
        "vae: KL per image fell to 0.5 at step 6 (< vae.min_kl_per_image=1): posterior collapse, "
        "the latents carry little information (the sample check at the end says what samples look like)"
    ]


def test_a_collapsing_vae_is_reported_in_metrics_and_model_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A huge beta without free bits drives the KL to ~0: the run warns and its metrics say so."""
    from imagegen.stages.train import run_train

    params = load_params(
        None,
        [
            *TINY,
            "vae.beta=1000",
            "vae.free_bits=0",
            "vae.steps=20",
            "vae.min_kl_per_image=0.5",
            f"train.checkpoints_dir={tmp_path / 'ckpt'}",
            f"train.models_dir={tmp_path / 'models'}",
            f"train.reports_dir={tmp_path / 'reports'}",
        ],
    )
    data = run_ingest(params, tmp_path / "digits")
    with caplog.at_level(logging.WARNING, logger="imagegen"):
        out = run_train(params, "vae", data_dir=data, show_progress=False)
    metrics = json.loads((tmp_path / "reports/train_vae/metrics.json").read_text())
    assert metrics["collapse_warning"] == 1.0 and metrics["kl_per_image"] < 0.5
    collapse = json.loads((out / "model.json").read_text())["collapse"]
    assert collapse["warning"] and "posterior collapse" in collapse["problems"][0]
    assert any("posterior collapse" in r.getMessage() for r in caplog.records)
