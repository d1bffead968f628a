"""Sample quality on the pipeline's learned features: real-image features, the metrics, the floor.

Used by ``imagegen evaluate`` and by distillation reports alike, so a model is measured the same
way wherever it is measured.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np

from imagegen.config import EvaluateConfig
from imagegen.data.processed import ProcessedDataset
from imagegen.data.raw import cache_root
from imagegen.evaluation import metrics
from imagegen.evaluation.features import FeatureExtractor
from imagegen.fileio import atomic_path
from imagegen.profiling import phase

log = logging.getLogger(__name__)


@phase("evaluate.real_features", "work")
def real_features(
    extractor: FeatureExtractor,
    dataset: ProcessedDataset,
    max_real: int,
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, probs and labels of (a seeded subset of) the test split, cached per dataset content
    hash and feature-extractor weights (outside any DVC output), so repeated evaluations embed them
    once. A cache entry that cannot be read back whole is recomputed (with a warning) and rewritten."""
    split = dataset.split("test")
    n = min(max_real, split.images.shape[0])
    key_text = f"{dataset.content_hash}|{extractor.fingerprint}|{n}|{seed}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    cache = cache_root() / "eval-features" / f"{key}.npz"
    cached = read_cached_features(cache, n)
    if cached is not None:
        return cached
    idx = np.sort(np.random.default_rng(seed).permutation(split.images.shape[0])[:n])
    feats, probs = extractor.embed(np.asarray(split.images[idx]), batch_size)
    labels = np.asarray(split.labels[idx])
    with atomic_path(cache, suffix=".npz") as tmp:
        np.savez(tmp, features=feats, probs=probs, labels=labels)
    return feats, probs, labels


def read_cached_features(cache: Path, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The (features, probs, labels) of ``n`` images in ``cache``, or None when there is no entry or it is
    damaged (truncated by a full disk, edited, from an older layout): a cache is only a shortcut, so a bad
    entry is recomputed and rewritten, with a warning naming it, rather than failing the evaluation."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as npz:
            feats, probs, labels = npz["features"], npz["probs"], npz["labels"]
        if not (feats.ndim == probs.ndim == 2 and labels.ndim == 1 and len(feats) == len(probs) == len(labels) == n):
            raise ValueError(f"shapes {feats.shape}, {probs.shape}, {labels.shape} for {n} images")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("%s: unreadable cached real-image features (%s); recomputing them", cache, reason)
        return None
    return feats, probs, labels


@phase("evaluate.metrics", "work")
def quality_metrics(
    real_f: np.ndarray, real_p: np.ndarray, fake_f: np.ndarray, fake_p: np.ndarray, cfg: EvaluateConfig, seed: int
) -> dict[str, float]:
    """FID (and FID relative to the real features' spread), KID, precision/recall, density/coverage and class
    coverage of generated features against real ones.

    ``cfg`` gives the KID subsets and the k of the k-NN manifolds; ``seed`` draws the KID subsets."""
    kid_mean, kid_std = metrics.kid(real_f, fake_f, subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=seed)
    precision, recall = metrics.precision_recall(real_f, fake_f, k=cfg.knn_k)
    density, coverage = metrics.density_coverage(real_f, fake_f, k=cfg.knn_k)
    cover = metrics.class_coverage(fake_p, real_p.shape[1])
    fid = metrics.fid(real_f, fake_f)
    return {
        "fid": fid,
        "relative_fid": metrics.relative_fid(fid, real_f),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "density": density,
        "coverage": coverage,
        "class_coverage": cover["class_coverage"],
        "class_entropy": cover["entropy"],
        "mean_confidence": cover["mean_confidence"],
        "classifier_score": cover["inception_score"],
    }


def real_floor(real_f: np.ndarray, real_p: np.ndarray, cfg: EvaluateConfig, seed: int) -> dict[str, float]:
    """The same metrics between two disjoint halves of the real images (split by ``seed``): what a perfect
    generator would score at that sample size."""
    half_a, half_b = metrics.split_halves(len(real_f), seed)
    return quality_metrics(real_f[half_a], real_p[half_a], real_f[half_b], real_p[half_b], cfg, seed)
