"""Row shards side by side on a CPU (imagegen.training.branches): a split batch gives the whole batch's results.

The train step of a batch-separable family and the samplers' predictor compute their batch in row shards that
TensorFlow runs concurrently, one intra-op thread each; these tests pin that the split changes nothing but the
summation order: the same loss, the same updated weights, the same predictions.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest

from imagegen.config import load_params
from imagegen.data.loader import BatchStream
from imagegen.data.processed import Split
from imagegen.startup import INTRAOP_THREADS_ENV, MAX_BRANCHES, usable_cores
from imagegen.training.branches import branches_for, cpu_branches, row_bounds, split_mean, split_rows
from imagegen.training.families import build_family
from imagegen.training.predict import compiled_predictor

TINY_DDPM = ["ddpm.base_channels=8", "ddpm.channel_mults=[1,2]", "ddpm.groups=4", "ddpm.timesteps=50"]


def test_row_bounds_cover_every_row_once_in_order() -> None:
    assert row_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert row_bounds(64, 2) == [(0, 32), (32, 64)]


def test_small_batches_and_single_branches_run_whole() -> None:
    assert branches_for(64, 2) == 2
    assert branches_for(15, 2) == 1  # fewer than 8 rows per shard
    assert branches_for(None, 2) == 1  # a relaxed trace of unknown batch size
    assert branches_for(64, 1) == 1


def test_the_branch_count_follows_the_intra_op_threads_the_process_runs_with() -> None:
    if keras.backend.backend() != "tensorflow":
        assert cpu_branches() == 1
        return
    intra = int(os.environ.get(INTRAOP_THREADS_ENV) or 0)
    expected = 1 if intra <= 0 else max(1, min(usable_cores() // intra, MAX_BRANCHES))
    assert cpu_branches() == expected


def test_a_split_mean_is_the_whole_batch_mean_with_uneven_shards() -> None:
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((50, 3)).astype("float32"), "scale": np.float32(2.0)}

    def loss(b):  # a batch mean of per-row terms, with a scalar shared by every row
        per_row = keras.ops.sum(keras.ops.square(b["x"]), axis=1) * b["scale"]
        return keras.ops.mean(per_row), {"mean_x": keras.ops.mean(b["x"])}

    whole_loss, whole_metrics = loss(batch)
    split_loss, split_metrics = split_mean(loss, batch, 3)  # 16, 17, 17 rows
    np.testing.assert_allclose(np.asarray(split_loss), np.asarray(whole_loss), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(split_metrics["mean_x"]), np.asarray(whole_metrics["mean_x"]), atol=1e-6)


def test_split_rows_concatenates_every_output_in_row_order() -> None:
    x = np.arange(40, dtype="float32").reshape(20, 2)
    out = split_rows(lambda a: (a * 2.0, a[:, :1]), (x,), 3)
    np.testing.assert_array_equal(np.asarray(out[0]), x * 2.0)
    np.testing.assert_array_equal(np.asarray(out[1]), x[:, :1])


def _ddpm_step_weights(branches: int) -> list[np.ndarray]:
    from imagegen.training.step_tensorflow import TensorFlowStepper

    params = load_params(None, TINY_DDPM)
    keras.utils.set_random_seed(0)
    family = build_family("ddpm", params, (8, 8, 1), 10)
    assert family.batch_separable
    stepper = TensorFlowStepper(family, jit_compile=False, branches=branches)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(128, 8, 8, 1), dtype=np.uint8)
    stream = BatchStream(Split(images, rng.integers(0, 10, len(images))), 48, seed=0)
    losses = []
    for _ in range(3):
        b = next(stream)
        metrics = stepper.step({"images": b.images, "labels": b.labels, **family.noise(rng, b.labels)})
        losses.append(float(metrics["loss"]))
    return [*(v.numpy() for v in family.networks["unet_ema"].weights), np.asarray(losses)]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the TensorFlow train step")
def test_a_ddpm_step_in_row_shards_trains_like_the_whole_batch() -> None:
    whole = _ddpm_step_weights(1)
    for split in (2, 3):  # 24 + 24 rows; 16 + 16 + 16
        for a, b in zip(whole, _ddpm_step_weights(split), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_a_family_with_batch_statistics_is_never_split() -> None:
    params = load_params(None, ["dcgan.base_filters=8", "dcgan.latent_dim=8"])
    assert not build_family("dcgan", params, (8, 8, 1), 10).batch_separable  # BatchNorm in its generator


def test_the_predictor_gives_the_same_rows_split_or_whole() -> None:
    params = load_params(None, TINY_DDPM)
    keras.utils.set_random_seed(0)
    unet = build_family("ddpm", params, (8, 8, 1), 10).networks["unet"]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 8, 8, 1)).astype("float32")
    t = rng.integers(0, 50, size=40).astype("float32")
    expected = np.asarray(unet([x, t], training=False))
    got = np.asarray(compiled_predictor(unet)(x, t))  # split into cpu_branches() shards where that is > 1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(split_rows(lambda a, b: unet([a, b], training=False), (x, t), 2)), expected, rtol=1e-5, atol=1e-5
    )
