"""Specifications of the sample-quality metrics, on synthetic feature matrices and images with known answers.

The end-to-end version (the pipeline's learned feature classifier, FID rising as images degrade) lives in
test_evaluate.py; everything here is pure numpy and runs in a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import ortho_group

from imagegen.evaluation import metrics as M


def gaussian(n: int, mean: np.ndarray, std: np.ndarray | float, seed: int) -> np.ndarray:
    mean = np.asarray(mean, dtype=np.float64)
    return np.random.default_rng(seed).normal(mean, std, size=(n, len(mean)))


# --------------------------------------------------------------------------------------------------- FID


def test_fid_of_a_feature_set_with_itself_is_zero() -> None:
    f = gaussian(2000, np.full(16, 5.0), 10.0, 0)  # scale: Tr(cov) ~ 1600
    scale = np.trace(np.cov(f, rowvar=False))
    assert abs(M.fid(f, f)) < 1e-6 * scale
    mu, sigma = M.feature_stats(f)
    assert mu.dtype == sigma.dtype == np.float64 and mu.shape == (16,) and sigma.shape == (16, 16)


MU1, MU2 = np.array([0.0, 1.0, 2.0, -1.0]), np.array([1.0, 1.0, 0.0, 0.0])
V1, V2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 1.0, 2.0])
# For diagonal (commuting) covariances sqrtm(S1 S2) = diag(sqrt(v1 v2)).
EXPECTED = np.sum((MU1 - MU2) ** 2) + np.sum(V1 + V2 - 2 * np.sqrt(V1 * V2))


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians() -> None:
    assert M.frechet_distance(MU1, np.diag(V1), MU2, np.diag(V2)) == pytest.approx(EXPECTED, rel=1e-9)
    # The distance is invariant under a common rotation: same value through full (non-diagonal) matrices.
    q = ortho_group.rvs(4, random_state=0)
    rotated = M.frechet_distance(q @ MU1, q @ np.diag(V1) @ q.T, q @ MU2, q @ np.diag(V2) @ q.T)
    assert rotated == pytest.approx(EXPECTED, rel=1e-9)


def test_fid_on_large_samples_matches_the_closed_form() -> None:
    """20k x 4 per side: the relative sampling error of the estimate is ~0.6% (std over seeds)."""
    a = gaussian(20000, MU1, np.sqrt(V1), 1)
    b = gaussian(20000, MU2, np.sqrt(V2), 2)
    assert M.fid(a, b) == pytest.approx(EXPECTED, rel=0.03)


def test_fid_rises_monotonically_with_added_noise() -> None:
    """On features directly (a fixed random linear map of "images" + noise); the end-to-end version with
    the learned classifier is in test_evaluate.py."""
    images = np.random.default_rng(0).uniform(0, 1, size=(3000, 64))
    feature_map = np.random.default_rng(1).normal(size=(64, 8)) / 8.0
    noise = np.random.default_rng(2).normal(size=images.shape)
    real = images @ feature_map
    fids = [M.fid(real, (images + s * noise) @ feature_map) for s in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)]
    assert abs(fids[0]) < 1e-9 and all(x < y for x, y in zip(fids, fids[1:], strict=False)), fids


def test_singular_covariances_give_a_finite_fid() -> None:
    few = gaussian(5, np.zeros(32), 1.0, 0)  # fewer samples than dimensions: rank-4 covariances
    assert math.isfinite(M.fid(few, gaussian(5, np.zeros(32), 1.0, 2)))
    const = gaussian(100, np.zeros(4), 1.0, 1)
    const[:, 2] = 3.0  # a dead feature: a zero row and column in the covariance
    # Same covariance, every mean shifted by 0.1: FID = 4 * 0.1^2; the dead feature
    # is degenerate on both sides, so the eps retry leaves the value exact.
    assert M.fid(const, const + 0.1) == pytest.approx(0.04, abs=1e-9)
    flat = np.ones((50, 6))  # zero covariance on both sides
    assert M.fid(flat, flat + 1.0) == pytest.approx(6.0, abs=1e-9)


def test_frechet_distance_rejects_bad_inputs() -> None:
    # Not a covariance: sqrtm(diag(-1, 1)) = diag(i, 1), an imaginary part far above 1e-3.
    with pytest.raises(ValueError, match="imaginary"):
        M.frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="shapes"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        M.fid(np.zeros((1, 4)), np.zeros((10, 4)))  # one row: no covariance


# --------------------------------------------------------------------------------------------------- KID


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    """KID's estimator is unbiased, so for one distribution its mean over subsets is 0 up to sampling noise.

    ``std`` is the spread of a single subset's estimate; the mean of 20 (overlapping) subsets varies less
    than that, so |mean| < 3 * std is a conservative bound (+1e-4 absolute for an extremely tight std).
    """
    a, b = gaussian(1500, np.zeros(8), 1.0, 0), gaussian(1500, np.zeros(8), 1.0, 1)
    same_mean, same_std = M.kid(a, b, subsets=20, subset_size=500)
    shifted_mean, shifted_std = M.kid(a, b + 0.5, subsets=20, subset_size=500)
    assert abs(same_mean) < 3 * same_std + 1e-4
    assert shifted_mean > 0.01 and shifted_mean > 10 * max(abs(same_mean), same_std)
    assert shifted_mean - 3 * shifted_std > 0


def _mmd2_unbiased_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    d, m = x.shape[1], len(x)
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_the_unbiased_mmd_formula_and_is_seeded() -> None:
    x, y = gaussian(25, np.zeros(5), 1.0, 3), gaussian(25, np.full(5, 0.3), 1.0, 4)
    # subset_size is clipped to 25: every subset is the whole set (permuted), so std is round-off only.
    mean, std = M.kid(x, y, subsets=3, subset_size=1000)
    assert mean == pytest.approx(_mmd2_unbiased_by_loops(x, y), rel=1e-9) and std < 1e-9
    a, b = gaussian(300, np.zeros(5), 1.0, 5), gaussian(300, np.zeros(5), 1.0, 6)
    assert M.kid(a, b, subsets=5, subset_size=50, seed=7) == M.kid(a, b, subsets=5, subset_size=50, seed=7)
    assert M.kid(a, b, subsets=5, subset_size=50, seed=7) != M.kid(a, b, subsets=5, subset_size=50, seed=8)


# ------------------------------------------------------------------------------------- precision / recall


@pytest.mark.parametrize(("dim", "k"), [(4, 3), (8, 5)])
def test_real_vs_real_precision_and_recall_are_near_one(dim: int, k: int) -> None:
    """2,000 vs 2,000 points of one Gaussian. The k-NN balls under-cover as the dimension grows at fixed N:
    at 8-D k=3 gives ~0.89, so 8-D is checked at k=5 (~0.95) and 4-D at k=3 (~0.96)."""
    a, b = gaussian(2000, np.zeros(dim), 1.0, 0), gaussian(2000, np.zeros(dim), 1.0, 1)
    precision, recall = M.precision_recall(a, b, k=k)
    assert precision > 0.9 and recall > 0.9


def test_a_collapsed_generator_has_high_precision_and_no_recall() -> None:
    real = gaussian(2000, np.zeros(8), 1.0, 0)
    collapsed = real[:1] + 1e-3 * gaussian(500, np.zeros(8), 1.0, 1)  # a tiny cluster on one real sample
    precision, recall = M.precision_recall(real, collapsed, k=3)
    assert precision > 0.9 and recall < 0.05
    identical = np.repeat(real[:1], 500, axis=0)  # every fake sample the very same point
    assert M.precision_recall(real, identical, k=3)[1] < 0.05


def _precision_recall_brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x: np.ndarray) -> np.ndarray:
        return np.sort(cdist(x, x), axis=1)[:, k]  # column 0 is the point itself

    def inside(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
        return (cdist(points, ref) <= radii(ref)[None, :]).any(axis=1)

    return float(inside(fake, real).mean()), float(inside(real, fake).mean())


@pytest.mark.parametrize("batch", [1, 7, 64, 10_000])
def test_precision_recall_in_blocks_matches_a_brute_force_computation(batch: int) -> None:
    real = gaussian(150, np.zeros(6), 1.0, 0)
    fake = gaussian(120, np.full(6, 0.7), 1.3, 1)  # shifted and wider: both values well inside (0, 1)
    got = M.precision_recall(real, fake, k=3, batch=batch)
    assert got == pytest.approx(_precision_recall_brute_force(real, fake, 3), abs=1e-12)
    assert 0.05 < got[0] < 0.95 and 0.05 < got[1] < 0.95


# ---------------------------------------------------------------------------------------- class coverage


def test_class_coverage_of_collapsed_and_balanced_predictions() -> None:
    one = np.tile(np.eye(10)[3], (500, 1))
    c = M.class_coverage(one, 10)
    assert c["class_coverage"] == pytest.approx(0.1) and c["entropy"] == pytest.approx(0.0)
    assert c["inception_score"] == pytest.approx(1.0) and c["mean_confidence"] == pytest.approx(1.0)
    balanced = np.eye(10)[np.arange(500) % 10]
    c = M.class_coverage(balanced, 10)
    assert c["class_coverage"] == 1.0 and c["entropy"] == pytest.approx(1.0)
    assert c["inception_score"] == pytest.approx(10.0)
    uniform = np.full((500, 10), 0.1)  # uninformative softmax: argmax all class 0, IS 1
    c = M.class_coverage(uniform, 10)
    assert c["mean_confidence"] == pytest.approx(0.1) and c["inception_score"] == pytest.approx(1.0)


def test_class_coverage_ignores_stray_predictions_below_min_share() -> None:
    labels = np.concatenate([np.arange(990) % 9, [9, 9]])  # class 9: 2 of 1000 predictions
    probs = np.eye(10)[labels]
    # Threshold max(1, 0.1 * 1000 / 10) = 10 predictions: class 9 is not covered.
    assert M.class_coverage(probs, 10)["class_coverage"] == pytest.approx(0.9)
    assert M.class_coverage(probs, 10, min_share=0.0)["class_coverage"] == 1.0  # threshold 1: argmax at least once


# ------------------------------------------------------------------------------------------ split halves


def test_split_halves_are_disjoint_equal_and_seeded() -> None:
    a, b = M.split_halves(101, seed=0)
    assert len(a) == len(b) == 50 and not set(a) & set(b) and set(a) | set(b) <= set(range(101))
    again = M.split_halves(101, seed=0)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    assert not np.array_equal(a, M.split_halves(101, seed=1)[0])


# -------------------------------------------------------------------------------------- SSIM and PSNR


@pytest.mark.parametrize("shape", [(6, 8, 8, 1), (4, 32, 32, 3)])
def test_image_similarity_of_identical_and_noisy_images(shape) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    same = M.image_similarity(x, x)
    assert same["ssim"] == pytest.approx(1.0) and same["psnr"] == math.inf and same["identical"] == shape[0]
    psnrs, ssims = [], []
    for sigma in (5, 20, 60):
        noisy = np.clip(x + rng.normal(0, sigma, shape), 0, 255).astype(np.uint8)
        sim = M.image_similarity(x, noisy)
        assert sim["ssim"] < 1 and math.isfinite(sim["psnr"]) and sim["identical"] == 0
        psnrs.append(sim["psnr"])
        ssims.append(sim["ssim"])
    assert psnrs == sorted(psnrs, reverse=True) and ssims == sorted(ssims, reverse=True)


def test_image_similarity_averages_psnr_over_the_differing_pairs() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    y = x.copy()
    y[2:] = np.clip(x[2:] + rng.normal(0, 20, x[2:].shape), 0, 255).astype(np.uint8)
    mixed = M.image_similarity(x, y)
    differing = M.image_similarity(x[2:], y[2:])
    assert mixed["identical"] == 2 and mixed["psnr"] == pytest.approx(differing["psnr"])
    assert mixed["ssim"] == pytest.approx((2 + 2 * differing["ssim"]) / 4)
    assert M.image_similarity(x[..., 0], y[..., 0]) == mixed  # (N, H, W) is read as one channel
    with pytest.raises(ValueError):
        M.image_similarity(x[:, :2, :2], y[:, :2, :2])  # too small for an SSIM window


# ---------------------------------------------------------------------------------------- density / coverage


@pytest.mark.parametrize("k", [3, 5])
def test_density_and_coverage_agree_with_the_prdc_package(k: int) -> None:
    import prdc

    rng = np.random.default_rng(k)
    real = rng.normal(size=(600, 12))
    fake = rng.normal(0.3, 1.3, size=(450, 12))
    expected = prdc.compute_prdc(real, fake, k)
    density, coverage = M.density_coverage(real, fake, k=k, batch=128)
    assert density == pytest.approx(expected["density"], abs=1e-12)
    assert coverage == pytest.approx(expected["coverage"], abs=1e-12)
    assert M.precision_recall(real, fake, k=k) == pytest.approx((expected["precision"], expected["recall"]))


def test_a_generator_of_one_image_covers_almost_none_of_the_real_data() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(500, 8))
    density, coverage = M.density_coverage(real, np.repeat(real[:1], 300, axis=0), k=5)
    assert coverage < 0.05
    good_density, good_coverage = M.density_coverage(real, rng.normal(size=(500, 8)), k=5)
    assert good_coverage > 0.9 and 0.7 < good_density < 1.3


# ---------------------------------------------------------------------------------------- relative FID


def test_relative_fid_of_the_mean_image_is_one() -> None:
    """A generator of the real mean: FID = tr(cov real) exactly, so the share of the real spread is 1."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(2000, 6)) * np.array([1, 2, 3, 1, 1, 0.5])
    mean = np.repeat(real.mean(axis=0, keepdims=True), 500, axis=0)
    assert M.relative_fid(M.fid(real, mean), real) == pytest.approx(1.0, rel=5e-3)


def test_relative_fid_does_not_shrink_with_the_test_set_while_the_floor_does() -> None:
    """The same slightly-off generator against 300 and 6,000 real images: its relative FID stays put, but the
    real-vs-real floor (an estimation bias) shrinks, so a ratio to the floor would refuse it on the big set."""
    rng = np.random.default_rng(1)
    fake = rng.normal(0.15, 1.0, size=(2000, 8))
    shares, floors = [], []
    for n in (300, 6000):
        real = rng.normal(size=(n, 8))
        shares.append(M.relative_fid(M.fid(real, fake), real))
        a, b = M.split_halves(n, 0)
        floors.append(M.fid(real[a], real[b]))
    assert shares[0] == pytest.approx(shares[1], abs=0.03)
    assert floors[1] < floors[0] / 10
