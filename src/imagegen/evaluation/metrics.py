"""Sample-quality metrics on feature matrices (N, D): pure numpy/scipy, no deep-learning framework.

* FID (Heusel et al. 2017): :func:`frechet_distance`, :func:`feature_stats`, :func:`fid`; :func:`relative_fid`, FID
  as a share of the real features' total variance (comparable across datasets and feature extractors).
* KID (Binkowski et al. 2018): :func:`kid`, unbiased MMD^2 with a cubic polynomial kernel over subsets.
* Improved precision / recall (Kynkaanniemi et al. 2019): :func:`precision_recall`, on k-NN balls.
* Density / coverage (Naeem et al. 2020): :func:`density_coverage`, on the real samples' k-NN balls only.
* Class coverage and an Inception-Score-style number from a classifier's softmax: :func:`class_coverage`.
* The real-vs-real floor's split: :func:`split_halves`.
* SSIM / PSNR (scikit-image) over paired uint8 images: :func:`image_similarity`.

The features come from whatever extractor the caller uses (here the pipeline's own small classifier, see
``imagegen.evaluation.features``); nothing in this module knows about it, so every function is testable on
synthetic matrices with known answers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import linalg

__all__ = [
    "class_coverage",
    "density_coverage",
    "feature_stats",
    "fid",
    "frechet_distance",
    "image_similarity",
    "kid",
    "relative_fid",
    "knn_radii",
    "precision_recall",
    "split_halves",
]

#: Largest imaginary component of sqrtm(S1 S2) that is treated as round-off and dropped.
IMAG_TOLERANCE = 1e-3
#: Relative residual ||X X - A||_F / ||A||_F above which a matrix square root is considered failed.
_SQRTM_RESIDUAL_TOLERANCE = 1e-6


def _features(x: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    f = np.asarray(x, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name}: expected a (N, D) feature matrix, got shape {f.shape}")
    if len(f) < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} rows, got {len(f)}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return f


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's sqrtm, plus whether it succeeded: finite, not flagged singular, and X @ X close to ``a``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = linalg.sqrtm(a)
    singular = any("singular" in str(w.message).lower() for w in caught)
    if singular or not np.isfinite(x).all():
        return x, False
    scale = np.linalg.norm(a)
    residual = np.linalg.norm(x @ x - a) / (scale if scale > 0 else 1.0)
    return x, bool(residual <= _SQRTM_RESIDUAL_TOLERANCE)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2): the FID formula.

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2))

    Numerical handling follows the reference implementations (TTUR / pytorch-fid):

    * ``scipy.linalg.sqrtm`` of the product is computed in float64. If the product is singular (scipy warns,
      e.g. fewer samples than dimensions or a constant feature), the result is not finite, or it is not a
      square root to ~1e-6 relative accuracy, ``eps * I`` is added to both covariances and it is retried.
      The regularised covariances are used in the trace terms too, so the result is the exact distance
      between the two regularised Gaussians (>= 0 up to round-off; pytorch-fid adds the offset inside the
      square root only, which reads 2 * D * eps lower). Directions degenerate on both sides contribute
      nothing; one with variance v on one side only moves by ~2 sqrt(eps * v), negligible next to any
      meaningful FID difference.
    * ``sqrtm`` of the product of two PSD matrices is real in exact arithmetic; a complex result whose
      largest imaginary part is <= 1e-3 is round-off and its real part is used. A larger imaginary part means
      the inputs are not valid covariances (not symmetric PSD) and raises ``ValueError``, as does a square
      root that is still not finite after the retry.

    The value is not clipped: for (near-)identical statistics it can come out a tiny negative number
    (round-off, ~1e-12 times the feature scale).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes do not agree: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {s2.shape}"
        )
    diff = mu1 - mu2

    covmean, ok = _sqrtm(s1 @ s2)
    if not ok:
        offset = np.eye(d) * eps
        s1, s2 = s1 + offset, s2 + offset
        covmean, _ = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        raise ValueError("frechet_distance: sqrtm(sigma1 @ sigma2) is not finite even with eps added")
    if np.iscomplexobj(covmean):
        largest = float(np.max(np.abs(covmean.imag)))
        if largest > IMAG_TOLERANCE:
            raise ValueError(
                f"frechet_distance: sqrtm(sigma1 @ sigma2) has an imaginary component of {largest:.3g} "
                f"(> {IMAG_TOLERANCE}); are both sigmas symmetric positive semi-definite covariances?"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and sample covariance (D, D) (``np.cov(rowvar=False)``, ddof=1) in float64."""
    f = _features(features, "feature_stats", min_rows=2)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature matrices (N_a, D) and (N_b, D).

    Biased upwards at small N (the covariance estimates are noisy): compare FIDs computed on equal N.
    """
    mu1, s1 = feature_stats(feats_a)
    mu2, s2 = feature_stats(feats_b)
    return frechet_distance(mu1, s1, mu2, s2)


def relative_fid(fid_value: float, real: np.ndarray) -> float:
    """``fid_value`` divided by the total variance (trace of the covariance) of the ``real`` features.

    FID is a squared distance in the feature space, so its scale is the feature extractor's: a learned
    classifier's features spread differently on every dataset. Divided by the real features' total variance it
    becomes a share of the real data's own spread: a generator of the mean image scores about 1 or more, a
    perfect one about 0. Unlike a ratio to the real-vs-real floor (an estimation bias that vanishes as the test
    set grows), it does not depend on how many real images there are.
    """
    r = _features(real, "relative_fid", min_rows=2)
    total = float(np.trace(np.atleast_2d(np.cov(r, rowvar=False))))
    if not total > 0:
        raise ValueError("relative_fid: the real features have no variance")
    return float(fid_value) / total


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (x @ y.T) + coef0) ** degree


def kid(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): mean and std of unbiased MMD^2 over subsets.

    Kernel ``k(x, y) = (gamma * x.y + coef0) ** degree`` with ``gamma = 1 / D`` by default, i.e. the cubic
    kernel ``(x.y / D + 1)^3`` of the paper. For each of ``subsets`` rounds, ``m`` rows are drawn without
    replacement from each set (``m = min(subset_size, len(a), len(b))``; a numpy ``Generator`` seeded with
    ``seed``) and the unbiased estimator is computed::

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
                  - 2 sum_{i, j} k(x_i, y_j) / m^2

    as in the reference implementations (Binkowski's ``polynomial_mmd_averages``, torch-fidelity). Being
    unbiased, it is zero in expectation for one distribution and can come out slightly negative. The std is
    the population std (ddof=0) of the per-subset values, the spread of one subset's estimate.
    """
    a, b = _features(feats_a, "kid"), _features(feats_b, "kid")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"kid: feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    m = min(int(subset_size), len(a), len(b))
    if m < 2:
        raise ValueError("kid: need at least 2 samples in each set (and subset_size >= 2)")
    gamma = 1.0 / a.shape[1] if gamma is None else float(gamma)
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = _poly_kernel(x, x, degree, gamma, coef0)
        kyy = _poly_kernel(y, y, degree, gamma, coef0)
        kxy = _poly_kernel(x, y, degree, gamma, coef0)
        values[i] = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2.0 * kxy.sum() / (m * m)
        )
    return float(values.mean()), float(values.std())


def _sq_distances(x: np.ndarray, y: np.ndarray, y_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(x), len(y)) as ||x||^2 + ||y||^2 - 2 x.y, in float64, clipped at 0.

    float64 keeps the cancellation error ~1e-16 * ||x||^2, so near neighbours are ranked correctly (float32
    would blur distances below ~1e-3 of the feature norm). Built in place: one block-sized array.
    """
    d = x @ y.T
    d *= -2.0
    d += (x * x).sum(axis=1)[:, None]
    d += y_sq[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def knn_radii(feats: np.ndarray, k: int = 3, batch: int = 512) -> np.ndarray:
    """Squared distance from each row to its k-th nearest neighbour in the same set, itself excluded.

    Distances are computed ``batch`` rows at a time (memory ~ 2 * batch * N * 8 bytes).
    """
    f = _features(feats, "knn_radii")
    n = len(f)
    if not 1 <= k < n:
        raise ValueError(f"knn_radii: need 1 <= k < N, got k={k}, N={n}")
    f_sq = (f * f).sum(axis=1)
    out = np.empty(n)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        d = _sq_distances(f[start:stop], f, f_sq)
        rows = np.arange(stop - start)
        d[rows, start + rows] = -1.0  # self sorts first, so column k is the k-th neighbour among the others
        out[start:stop] = np.partition(d, k, axis=1)[:, k]
    return out


def _inside_manifold(points: np.ndarray, ref: np.ndarray, radii: np.ndarray, batch: int) -> np.ndarray:
    """For each point: is it within the k-NN ball (squared radius ``radii``) of at least one ``ref`` row?"""
    ref_sq = (ref * ref).sum(axis=1)
    inside = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), batch):
        d = _sq_distances(points[start : start + batch], ref, ref_sq)
        inside[start : start + batch] = (d <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, batch: int = 512) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) on k-NN manifolds.

    Each set's manifold is the union of balls around its samples with radius = distance to the sample's
    k-th nearest neighbour in the same set (itself excluded).

    * precision = share of fake samples inside the real manifold (realism / fidelity);
    * recall    = share of real samples inside the fake manifold (diversity; a collapsed generator's
      manifold is tiny, so recall drops to ~0).

    Squared distances are compared (equivalent to distances, without the square roots). Pairwise distances
    are computed ``batch`` rows at a time in float64: peak memory ~ 2 * batch * max(N_real, N_fake) * 8 bytes,
    ~80 MB for 10,000 x 10,000 at ``batch=512``. With few samples in many dimensions the balls under-cover:
    real-vs-real values sit below 1 (e.g. ~0.89 for 2,000 vs 2,000 Gaussian points in 8-D at k=3, ~0.95 at
    k=5), which is why evaluations report a real-vs-real floor next to them.
    """
    r, f = _features(real, "precision_recall"), _features(fake, "precision_recall")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"precision_recall: feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision_recall: need more than k={k} samples in each set, got {len(r)} and {len(f)}")
    if batch < 1:
        raise ValueError(f"precision_recall: batch must be >= 1, got {batch}")
    precision = _inside_manifold(f, r, knn_radii(r, k, batch), batch).mean()
    recall = _inside_manifold(r, f, knn_radii(f, k, batch), batch).mean()
    return float(precision), float(recall)


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5, batch: int = 512) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020), as the ``prdc`` package computes them.

    Only the real samples' k-NN balls are used (radius: distance to the k-th nearest other real sample), so
    outliers among the fakes cannot inflate them:

    * density  = (1 / k) x the mean, over fake samples, of how many real balls contain the sample
      (about 1 for a generator matching the real distribution, above 1 when samples crowd dense regions);
    * coverage = share of real samples whose ball contains at least one fake sample (diversity; a
      collapsed generator covers only the balls around its few modes).

    Containment is strict (distance < radius), as in ``prdc``. Distances are computed ``batch`` real rows
    at a time in float64.
    """
    r, f = _features(real, "density_coverage"), _features(fake, "density_coverage")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"density_coverage: feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    if len(r) <= k:
        raise ValueError(f"density_coverage: need more than k={k} real samples, got {len(r)}")
    radii = knn_radii(r, k, batch)
    f_sq = (f * f).sum(axis=1)
    inside = np.zeros(len(f))
    covered = np.zeros(len(r), dtype=bool)
    for start in range(0, len(r), batch):
        d = _sq_distances(r[start : start + batch], f, f_sq)  # (real block, fake)
        within = d < radii[start : start + batch, None]
        inside += within.sum(axis=0)
        covered[start : start + batch] = within.any(axis=1)
    return float(inside.mean() / k), float(covered.mean())


def class_coverage(probs: np.ndarray, num_classes: int, min_share: float = 0.1) -> dict[str, float]:
    """How generated samples spread over the classes, from a classifier's softmax outputs (N, C).

    * ``class_coverage``: share of the C classes that receive at least ``max(1, min_share * N / C)`` argmax
      predictions, i.e. at least ``min_share`` (default 10%) of the count a perfectly balanced generator
      would give them; a class hit only by a stray sample or two is not counted as covered.
    * ``entropy``: entropy (nats) of the predicted-class histogram divided by log(C): 1 = uniform, 0 = every
      sample in one class (mode collapse). 0 when C == 1.
    * ``mean_confidence``: mean of the max probability per sample.
    * ``inception_score``: ``exp(E_x KL(p(y|x) || p(y)))`` with p(y) the mean softmax, the Inception Score
      computed with this classifier (1 = collapsed or uninformative, C = confident and balanced).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"class_coverage: expected softmax outputs (N, C) with N >= 1, got shape {p.shape}")
    if num_classes < 1 or p.shape[1] > num_classes:
        raise ValueError(f"class_coverage: num_classes={num_classes} but probs have {p.shape[1]} columns")
    n = len(p)
    counts = np.bincount(p.argmax(axis=1), minlength=num_classes)
    threshold = max(1.0, min_share * n / num_classes)
    hist = counts / n
    nz = hist[hist > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(num_classes)) if num_classes > 1 else 0.0
    marginal = p.mean(axis=0)
    log_p = np.log(np.clip(p, 1e-12, None))
    log_marginal = np.log(np.clip(marginal, 1e-12, None))
    kl = (p * (log_p - log_marginal[None, :])).sum(axis=1)
    return {
        "class_coverage": float((counts >= threshold).sum() / num_classes),
        "entropy": max(entropy, 0.0),
        "mean_confidence": float(p.max(axis=1).mean()),
        "inception_score": float(np.exp(kl.mean())),
    }


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, equal, seeded halves of ``range(n)`` (sorted indices), for the real-vs-real floor.

    For odd ``n`` one index is left out, so both halves have ``n // 2`` elements.
    """
    if n < 2:
        raise ValueError(f"split_halves: need n >= 2, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(perm[:half]), np.sort(perm[half : 2 * half])


def image_similarity(a_uint8: np.ndarray, b_uint8: np.ndarray) -> dict[str, float | int]:
    """Mean SSIM and PSNR (scikit-image, ``data_range=255``) over paired images (N, H, W, C) on a 0..255 scale.

    * SSIM: ``structural_similarity`` per pair, ``channel_axis=-1`` for multi-channel images, the channel
      squeezed for C = 1; ``win_size = min(7, largest odd number <= min(H, W))`` so small images (8x8 and
      up; sides must be >= 3) work.
    * PSNR: ``peak_signal_noise_ratio`` per pair. Identical images have infinite PSNR; they are counted in
      ``identical`` and left out of the mean, so ``psnr`` is the mean over the differing pairs, and
      ``float("inf")`` only when every pair is identical.

    Returns ``{"ssim": float, "psnr": float, "identical": int}``. (N, H, W) is read as C = 1.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = np.asarray(a_uint8), np.asarray(b_uint8)
    if a.ndim == 3:
        a = a[..., None]
    if b.ndim == 3:
        b = b[..., None]
    if a.shape != b.shape or a.ndim != 4 or len(a) == 0:
        raise ValueError(
            f"image_similarity: expected two non-empty (N, H, W, C) batches of one shape, got "
            f"{np.shape(a_uint8)} and {np.shape(b_uint8)}"
        )
    _, h, w, c = a.shape
    side = min(h, w)
    if side < 3:
        raise ValueError(f"image_similarity: images must be at least 3x3 for SSIM, got {h}x{w}")
    win = min(7, side if side % 2 else side - 1)
    ssims, psnrs, identical = [], [], 0
    for x, y in zip(a, b, strict=True):
        if c == 1:
            ssims.append(structural_similarity(x[..., 0], y[..., 0], data_range=255, win_size=win))
        else:
            ssims.append(structural_similarity(x, y, data_range=255, win_size=win, channel_axis=-1))
        if np.array_equal(x, y):
            identical += 1
        else:
            psnrs.append(peak_signal_noise_ratio(x, y, data_range=255))
    return {
        "ssim": float(np.mean(ssims)),
        "psnr": float(np.mean(psnrs)) if psnrs else float("inf"),
        "identical": identical,
    }
