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


def embedding_numerics(batch_size: int) -> str:
    """What decides an embedding's bits besides the weights and the images, as one string: the Keras backend and
    the version of its library, the device, the CPU convolution math in effect and the batch size.

    The same images through the same weights give other float bits under another library version, on a GPU, in
    batches of another size (other kernels), and in a process whose convolutions run in bfloat16 math (a training
    or distillation process, ``train.cpu_math``): the measurement a cache entry holds must be the one this process
    would have computed."""
    import keras

    from imagegen.training.precision import accelerator, cpu_math_in_effect

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as library
    elif backend == "jax":
        import jax as library
    else:
        import keras as library
    device = accelerator()
    math = cpu_math_in_effect() if device == "cpu" else "device"
    return f"{backend}-{library.__version__}|keras-{keras.__version__}|{device}|{math}|batch{int(batch_size)}"


def real_features_cache(dataset_hash: str, fingerprint: str, n: int, seed: int, numerics: str) -> Path:
    """The cache file of the real-image features of ``n`` test images drawn with ``seed`` from the dataset of
    content hash ``dataset_hash``, embedded by the feature extractor ``fingerprint`` with ``numerics``
    (:func:`embedding_numerics`)."""
    key_text = f"{dataset_hash}|{fingerprint}|{n}|{seed}|{numerics}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    return cache_root() / "eval-features" / f"{key}.npz"


@phase("evaluate.real_features", "work")
def real_features(
    extractor: FeatureExtractor,
    dataset: ProcessedDataset,
    max_real: int,
    seed: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, probs and labels of (a seeded subset of) the test split, cached (outside any DVC output) so
    repeated evaluations embed them once.

    The cache is keyed by everything that decides the features' bits (:func:`real_features_cache`): the dataset's
    content, the extractor's weights, the subset, and the numerics of the process (:func:`embedding_numerics`).
    A distillation process, whose convolutions run in bfloat16 math, and an ``imagegen evaluate`` process in
    float32 therefore each read features computed as they would compute them, whichever ran first on the machine.
    A cache entry that cannot be read back whole is recomputed (with a warning) and rewritten."""
    split = dataset.split("test")
    n = min(max_real, split.images.shape[0])
    cache = real_features_cache(dataset.content_hash, extractor.fingerprint, n, seed, embedding_numerics(batch_size))
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
