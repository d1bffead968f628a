"""Sample-quality metrics on feature matrices (N, D): pure numpy/scipy, no deep-learning framework.

FID (Heusel et al. 2017), KID (Binkowski et al. 2018), precision/recall on k-NN manifolds (Kynkaanniemi
et al. 2019), class coverage from a classifier's softmax, and SSIM/PSNR (scikit-image) for paired images.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import linalg


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)).

    As in the reference implementations: when ``sqrtm`` of the product is not finite (singular covariances,
    e.g. fewer samples than dimensions or a constant feature), ``eps * I`` is added to both covariances and
    it is retried; a small imaginary part from numerical error is dropped, a large one (> 1e-3) is an error.
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if np.max(np.abs(covmean.imag)) > 1e-3:
            raise ValueError(f"frechet_distance: sqrtm has a large imaginary component ({np.max(np.abs(covmean.imag)):.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))


def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (x @ y.T) + coef0) ** degree


def kid(
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3, mean and std over subsets."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("kid: need at least 2 samples in each set")
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (_poly_kernel(p, q, degree, gamma, coef0) for p, q in ((x, x), (y, y), (x, y)))
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2.0 * kxy.mean()
        )
        values.append(mmd)
    return float(np.mean(values)), float(np.std(values))


def _sq_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.maximum(d, 0.0)


def knn_radii(feats: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour in the same set (self excluded)."""
    out = np.empty(len(feats))
    for start in range(0, len(feats), block):
        d = _sq_distances(feats[start : start + block], feats)
        # Column 0 of the sorted row is the point itself (distance 0); the k-th neighbour is column k.
        out[start : start + block] = np.partition(d, k, axis=1)[:, k]
    return out


def _inside_manifold(points: np.ndarray, ref: np.ndarray, radii: np.ndarray, block: int = 1024) -> np.ndarray:
    inside = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), block):
        d = _sq_distances(points[start : start + block], ref)
        inside[start : start + block] = (d <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) on k-NN balls, computed in blocks.

    precision: share of fake samples inside the real manifold (some real point's k-NN ball);
    recall: share of real samples inside the fake manifold.
    """
    r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision_recall: need more than k={k} samples in each set")
    precision = _inside_manifold(f, r, knn_radii(r, k)).mean()
    recall = _inside_manifold(r, f, knn_radii(f, k)).mean()
    return float(precision), float(recall)


def class_coverage(probs: np.ndarray, num_classes: int, min_share: float = 0.1) -> dict[str, float]:
    """How generated samples spread over the classes, from a classifier's softmax (N, C).

    coverage: share of classes that receive at least ``max(1, min_share * N / C)`` argmax predictions (a class
    hit by a stray sample or two does not count as covered); entropy: entropy of the predicted-class histogram
    over log(C) (1 = uniform, 0 = one class: mode collapse); mean_confidence: mean max probability;
    inception_score: exp(E_x KL(p(y|x) || p(y))), the Inception Score computed with this classifier.
    """
    p = np.asarray(probs, np.float64)
    n = len(p)
    counts = np.bincount(p.argmax(1), minlength=num_classes)
    threshold = max(1.0, min_share * n / num_classes)
    hist = counts / n
    nz = hist[hist > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(num_classes)) if num_classes > 1 else 0.0
    marginal = p.mean(0)
    kl = (p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(marginal, 1e-12, None)))).sum(1)
    return {
        "coverage": float((counts >= threshold).sum() / num_classes),
        "entropy": max(entropy, 0.0),
        "mean_confidence": float(p.max(1).mean()),
        "inception_score": float(np.exp(kl.mean())),
    }


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, seeded halves of range(n): the real-vs-real floor compares them."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 : 2 * (n // 2)])


def image_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean SSIM and PSNR (scikit-image, data_range 255) over paired uint8 images (N, H, W, C).

    PSNR of identical images is infinite: the mean is over the finite pairs, ``identical`` counts the others,
    and ``psnr`` is inf only when every pair is identical.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"image_similarity: expected two (N,H,W,C) batches of one shape, got {a.shape} and {b.shape}")
    _, h, w, c = a.shape
    win = min(7, h, w)
    win = win if win % 2 else win - 1
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
        "identical": float(identical),
    }
