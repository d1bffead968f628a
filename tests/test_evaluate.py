"""Evaluation end to end: the pipeline's own feature classifier, then metrics of images against held-out data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imagegen.config import load_params
from imagegen.data.processed import ProcessedDataset
from imagegen.errors import DataError
from imagegen.evaluation.features import load_extractor
from imagegen.evaluation.quality import embedding_numerics, real_features
from imagegen.stages.evaluate import run_evaluate
from imagegen.stages.ingest import run_ingest
from imagegen.stages.train_features import run_train_features

BASE = [
    "tracking.enabled=false",
    "data.image_size=8",
    "data.test_fraction=0.4",
    "evaluate.feature_epochs=6",
    "evaluate.feature_width=16",
    "evaluate.feature_dim=32",
    "evaluate.kid_subset_size=200",
    "evaluate.kid_subsets=20",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """Digits (8x8, 40% held out so both halves of the floor have ~360 images) and a trained classifier."""
    root = tmp_path_factory.mktemp("eval")
    params = load_params(
        None,
        [
            *BASE,
            f"train.reports_dir={root / 'reports'}",
            f"data.processed_dir={root / 'data'}",
            f"evaluate.features_dir={root / 'features'}",
        ],
    )
    data = run_ingest(params)
    features = run_train_features(params, data_dir=data)
    return params, data, features, root


def write_npz(path: Path, images: np.ndarray) -> Path:
    np.savez(path, images=images)
    return path


def test_the_feature_classifier_is_trained_and_its_accuracy_recorded(setup) -> None:
    params, _, features, root = setup
    scores = json.loads((root / "reports" / "train_features" / "metrics.json").read_text())
    assert scores["test_accuracy"] >= 0.85, scores  # digits are easy even at 8x8
    assert load_extractor(features).meta["scores"] == scores


def test_real_held_out_images_score_like_the_floor(setup, tmp_path, monkeypatch) -> None:
    params, data, features, _ = setup
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    train = ProcessedDataset.open(data).split("train")
    samples = write_npz(tmp_path / "real.npz", np.asarray(train.images[:700]))
    out = run_evaluate(params, tmp_path / "out", samples=samples, data_dir=data, features_dir=features)
    m = json.loads((out / "metrics.json").read_text())
    assert m["precision"] > 0.8 and m["recall"] > 0.8, m
    assert m["class_coverage"] == 1.0 and m["coverage"] > 0.8 and 0.7 < m["density"] < 1.3, m
    assert m["relative_fid"] < 0.1, m  # a small share of the real features' spread
    assert m["fid"] < 3 * m["floor"]["fid"] + 1.0, m  # real train images vs real test: close to real-vs-real
    assert {"class_histogram.csv", "grid.png", "report.md"} <= {p.name for p in out.iterdir()}
    assert "real-vs-real floor" in (out / "report.md").read_text()
    assert any((tmp_path / "cache" / "eval-features").iterdir())  # real features cached for next time


# Real-image features embedded by a process whose convolutions run in bfloat16 math (as `imagegen distill`'s do):
# prints the numerics it embedded with.
BF16_EMBEDDING = """
import sys
from imagegen import startup
startup.set_tensorflow_defaults()
with startup.cpu_math_requested("bf16"):
    from imagegen.data.processed import ProcessedDataset
    from imagegen.evaluation.features import load_extractor
    from imagegen.evaluation.quality import embedding_numerics, real_features
    extractor = load_extractor(sys.argv[1])
    real_features(extractor, ProcessedDataset.open(sys.argv[2]), 10000, 0, 256)
print(embedding_numerics(256))
"""


def test_cached_real_features_are_those_this_process_would_compute_whichever_process_cached_first(
    setup, tmp_path, monkeypatch
) -> None:
    params, data, features, _ = setup
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(cache))
    env = {**os.environ, "IMAGEGEN_CACHE_DIR": str(cache)}
    env.pop("TF_SET_ONEDNN_FPMATH_MODE", None)
    first = subprocess.run(
        [sys.executable, "-c", BF16_EMBEDDING, str(features), str(data)], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr[-3000:]
    theirs = first.stdout.strip().splitlines()[-1]

    extractor = load_extractor(features)
    dataset = ProcessedDataset.open(data)
    ours = real_features(extractor, dataset, 10000, 0, 256)
    again = real_features(extractor, dataset, 10000, 0, 256)  # read back from this process's own entry
    split = dataset.split("test")
    idx = np.sort(np.random.default_rng(0).permutation(split.images.shape[0]))
    fresh = extractor.embed(np.asarray(split.images[idx]), 256)
    for got in (ours, again):
        np.testing.assert_array_equal(got[0], fresh[0])
        np.testing.assert_array_equal(got[1], fresh[1])
    # One entry per numerics: where this CPU has bfloat16 math, the bfloat16 process's entry is its own.
    entries = list((cache / "eval-features").iterdir())
    assert len(entries) == (1 if theirs == embedding_numerics(256) else 2), (theirs, embedding_numerics(256))
    # Another batch size is other kernels, so another entry too.
    real_features(extractor, dataset, 10000, 0, 64)
    assert len(list((cache / "eval-features").iterdir())) == len(entries) + 1


def test_embedding_numerics_name_the_library_the_device_the_cpu_math_and_the_batch() -> None:
    import keras

    numerics = embedding_numerics(128)
    backend, rest = numerics.split("|", 1)
    assert backend.startswith(keras.backend.backend() + "-")
    assert f"keras-{keras.__version__}" in rest and rest.endswith("|batch128")
    assert rest.split("|")[1:3] in (["cpu", "float32"], ["cpu", "bf16"], ["gpu", "device"])


def test_a_collapsed_generator_is_caught(setup, tmp_path, monkeypatch) -> None:
    params, data, features, _ = setup
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    one = np.asarray(ProcessedDataset.open(data).split("train").images[:1])
    samples = write_npz(tmp_path / "collapsed.npz", np.repeat(one, 500, axis=0))
    m = json.loads(
        (
            run_evaluate(params, tmp_path / "o", samples=samples, data_dir=data, features_dir=features) / "metrics.json"
        ).read_text()
    )
    assert m["class_coverage"] == pytest.approx(0.1)  # one class of ten
    assert m["coverage"] < 0.05  # the one image reaches a handful of the real k-NN balls
    assert m["relative_fid"] > 0.5  # beyond the registry's default max_relative_fid
    assert m["recall"] < 0.05
    assert m["class_entropy"] < 0.05


def test_fid_rises_with_the_strength_of_noise_added_to_real_images(setup, tmp_path, monkeypatch) -> None:
    params, data, features, _ = setup
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    real = np.asarray(ProcessedDataset.open(data).split("train").images[:600]).astype(np.float64)
    rng = np.random.default_rng(0)
    fids = []
    for sigma in (0, 20, 50, 100):
        noisy = np.clip(real + rng.normal(0, sigma, real.shape), 0, 255).astype(np.uint8)
        out = run_evaluate(
            params,
            tmp_path / f"s{sigma}",
            samples=write_npz(tmp_path / f"{sigma}.npz", noisy),
            data_dir=data,
            features_dir=features,
        )
        fids.append(json.loads((out / "metrics.json").read_text())["fid"])
    assert fids == sorted(fids) and fids[-1] > 2 * fids[0], fids


def test_bad_sample_files_are_named(setup, tmp_path) -> None:
    params, data, features, _ = setup
    bad = tmp_path / "floats.npz"
    np.savez(bad, images=np.zeros((4, 8, 8, 1), dtype=np.float32))
    with pytest.raises(DataError, match=r"floats\.npz.*uint8"):
        run_evaluate(params, tmp_path / "o", samples=bad, data_dir=data, features_dir=features)
    wrong_size = write_npz(tmp_path / "big.npz", np.zeros((4, 16, 16, 1), dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected uint8 \(N, 8, 8, 1\)"):
        run_evaluate(params, tmp_path / "o", samples=wrong_size, data_dir=data, features_dir=features)


def test_evaluating_a_vae_adds_reconstruction_ssim_and_psnr(setup, tmp_path, monkeypatch) -> None:
    from imagegen.stages.train import run_train

    params, data, features, root = setup
    monkeypatch.setenv("IMAGEGEN_CACHE_DIR", str(tmp_path / "cache"))
    p = load_params(
        None,
        [
            *BASE,
            "vae.steps=20",
            "vae.base_filters=8",
            "train.batch_size=32",
            "train.jit_compile=false",
            "evaluate.n_samples=200",
            f"train.checkpoints_dir={tmp_path / 'ck'}",
            f"train.reports_dir={tmp_path / 'r'}",
        ],
    )
    model = run_train(p, "vae", data_dir=data, out_dir=tmp_path / "vae", show_progress=False)
    m = json.loads(
        (
            run_evaluate(p, tmp_path / "o", model_dir=model, data_dir=data, features_dir=features, show_progress=False)
            / "metrics.json"
        ).read_text()
    )
    assert m["n_generated"] == 200
    assert 0 < m["ssim"] < 1 and 0 < m["psnr"] < 60


@pytest.mark.slow
def test_feature_classifier_reaches_85_percent_on_fashion_mnist(shared_datasets, tmp_path, monkeypatch) -> None:
    """Bound checked: >= 85% test accuracy after 3 epochs on the full 60k training split at 16x16."""
    monkeypatch.setenv("IMAGEGEN_DATA_DIR", str(shared_datasets))
    params = load_params(
        None,
        [
            "tracking.enabled=false",
            "data.name=fashion_mnist",
            "evaluate.feature_epochs=3",
            f"data.processed_dir={tmp_path / 'd'}",
            f"train.reports_dir={tmp_path / 'r'}",
        ],
    )
    features = run_train_features(params, data_dir=run_ingest(params), out_dir=tmp_path / "f")
    acc = load_extractor(features).meta["scores"]["test_accuracy"]
    assert acc >= 0.85, acc
