"""The metrics themselves, on feature matrices with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from imagegen.evaluation import metrics as M


def gaussian(n: int, mean: np.ndarray, std: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, std, size=(n, len(mean)))


def test_fid_of_a_feature_set_with_itself_is_zero() -> None:
    f = gaussian(2000, np.zeros(16), np.ones(16), 0)
    assert abs(M.fid(f, f)) < 1e-6


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)
    a = gaussian(40000, mu1, np.sqrt(v1), 1)
    b = gaussian(40000, mu2, np.sqrt(v2), 2)
    assert M.fid(a, b) == pytest.approx(expected, rel=0.03)


def test_fid_rises_monotonically_with_added_noise() -> None:
    """On features directly; the end-to-end version with the learned classifier is in test_evaluate.py."""
    real = gaussian(3000, np.zeros(8), np.ones(8), 0)
    noise = gaussian(3000, np.zeros(8), np.ones(8), 1)
    fids = [M.fid(real, real + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert fids == sorted(fids) and fids[0] < 1e-9 < fids[1]


def test_singular_covariances_give_a_finite_fid() -> None:
    few = gaussian(5, np.zeros(32), np.ones(32), 0)  # fewer samples than dimensions
    const = gaussian(100, np.zeros(4), np.ones(4), 1)
    const[:, 2] = 3.0  # a dead feature
    assert math.isfinite(M.fid(few, gaussian(5, np.zeros(32), np.ones(32), 2)))
    assert math.isfinite(M.fid(const, const + 0.1))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    a, b = gaussian(1500, np.zeros(8), np.ones(8), 0), gaussian(1500, np.zeros(8), np.ones(8), 1)
    same_mean, same_std = M.kid(a, b, subsets=20, subset_size=500)
    shifted_mean, _ = M.kid(a, b + 0.5, subsets=20, subset_size=500)
    assert abs(same_mean) < 3 * same_std + 1e-3  # unbiased: zero within its own spread
    assert shifted_mean > 10 * max(abs(same_mean), same_std)


def test_real_vs_real_precision_and_recall_are_near_one() -> None:
    """With k=3, the k-NN balls under-cover in high dimensions at small N (8-D, 2k points: ~0.89); 4-D: ~0.97."""
    a, b = gaussian(2000, np.zeros(4), np.ones(4), 0), gaussian(2000, np.zeros(4), np.ones(4), 1)
    precision, recall = M.precision_recall(a, b, k=3)
    assert precision > 0.9 and recall > 0.9


def test_a_collapsed_generator_has_high_precision_and_no_recall() -> None:
    real = gaussian(2000, np.zeros(8), np.ones(8), 0)
    collapsed = np.repeat(real[:1], 500, axis=0) + 1e-3 * gaussian(500, np.zeros(8), np.ones(8), 1)
    precision, recall = M.precision_recall(real, collapsed, k=3)
    assert precision > 0.9 and recall < 0.05


def test_class_coverage_of_collapsed_and_balanced_predictions() -> None:
    one = np.tile(np.eye(10)[3], (500, 1))
    c = M.class_coverage(one, 10)
    assert c["coverage"] == pytest.approx(0.1) and c["entropy"] == pytest.approx(0.0) and c["inception_score"] == pytest.approx(1.0)
    balanced = np.eye(10)[np.arange(500) % 10]
    c = M.class_coverage(balanced, 10)
    assert c["coverage"] == 1.0 and c["entropy"] == pytest.approx(1.0) and c["inception_score"] == pytest.approx(10.0)


def test_split_halves_are_disjoint_and_equal() -> None:
    a, b = M.split_halves(101, seed=0)
    assert len(a) == len(b) == 50 and not set(a) & set(b)


@pytest.mark.parametrize("shape", [(6, 8, 8, 1), (4, 32, 32, 3)])
def test_image_similarity_of_identical_and_noisy_images(shape) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    same = M.image_similarity(x, x)
    assert same["ssim"] == pytest.approx(1.0) and same["psnr"] == math.inf and same["identical"] == shape[0]
    psnrs = []
    for sigma in (5, 20, 60):
        noisy = np.clip(x + rng.normal(0, sigma, shape), 0, 255).astype(np.uint8)
        sim = M.image_similarity(x, noisy)
        assert sim["ssim"] < 1 and math.isfinite(sim["psnr"])
        psnrs.append(sim["psnr"])
    assert psnrs == sorted(psnrs, reverse=True)
