"""Collapse checks run by the training stage, so a collapsed model is flagged where it happens.

- **Posterior collapse (VAE)**: the KL per image falls towards 0 and every reconstruction becomes the mean
  image. :class:`KLWatch` watches the logged ``kl`` and warns once when it falls below ``vae.min_kl_per_image``
  after the first fifth of training (at initialisation the KL is ~0 for every VAE, collapsed or not).
- **Mode collapse / broken samples (every family)**: :func:`sample_health` compares a fixed batch of samples
  drawn at the end of training with real training images: the share of finite values, the mean pairwise
  distance between samples over that of real images (*diversity ratio*: ~0 when every sample is the same
  image) and the mean per-image pixel spread over the real one (*contrast ratio*: ~0 for flat images).

Both report into the stage's ``metrics.json`` (``kl_per_image``, ``samples.*``, ``collapse_warning``) and the
model's ``model.json`` (``collapse``), and warn through the ``imagegen`` logger (the CLI prints it on stderr).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


def mean_pairwise_distance(images: np.ndarray) -> float:
    """Mean Euclidean distance between every pair of (flattened) images; 0 for fewer than two."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    n = len(flat)
    if n < 2:
        return 0.0
    sq = np.sum(flat**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0)
    return float(np.sqrt(d2)[np.triu_indices(n, k=1)].mean())


def sample_health(samples: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Finite share, diversity ratio and contrast ratio of float samples vs real images (both in [-1, 1])."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = np.isfinite(samples)
    clean = np.where(finite, samples, 0.0)
    real = np.asarray(real, dtype=np.float64)
    real_div = mean_pairwise_distance(real)
    real_std = float(real.reshape(len(real), -1).std(axis=1).mean())
    return {
        "finite_fraction": float(finite.mean()) if samples.size else 0.0,
        "diversity_ratio": mean_pairwise_distance(clean) / real_div if real_div > 0 else float("nan"),
        "contrast_ratio": float(clean.reshape(len(clean), -1).std(axis=1).mean()) / real_std
        if real_std > 0
        else float("nan"),
    }


def sample_problems(health: dict[str, float], min_diversity: float, min_contrast: float) -> list[str]:
    """Human-readable reasons the samples look collapsed (empty when healthy)."""
    problems = []
    if health["finite_fraction"] < 1.0:
        problems.append(f"{100 * (1 - health['finite_fraction']):.1f}% of sample values are not finite")
    if health["diversity_ratio"] < min_diversity:
        problems.append(
            f"samples are nearly identical (diversity ratio {health['diversity_ratio']:.3g} < "
            f"train.min_sample_diversity={min_diversity:g})"
        )
    if health["contrast_ratio"] < min_contrast:
        problems.append(
            f"samples are flat (contrast ratio {health['contrast_ratio']:.3g} < "
            f"train.min_sample_contrast={min_contrast:g})"
        )
    return problems


@dataclass
class KLWatch:
    """Warn once when the logged ``kl`` (per image) falls below ``threshold`` after ``start_step``."""

    threshold: float
    start_step: int
    warned_at: int | None = None
    values: list[tuple[int, float]] = field(default_factory=list)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if "kl" not in metrics:
            return
        kl = float(metrics["kl"])
        self.values.append((step, kl))
        if self.warned_at is None and step >= self.start_step and kl < self.threshold:
            self.warned_at = step
            log.warning(
                "vae: KL per image fell to %.3g at step %d (< vae.min_kl_per_image=%g): posterior collapse, "
                "samples tend to the mean image",
                kl,
                step,
                self.threshold,
            )

    def final_kl(self, history: list[dict[str, float]]) -> float:
        """Mean ``kl`` over the last tenth of the logged history (at least one row); nan if none."""
        kls = [row["kl"] for row in history if "kl" in row]
        if not kls:
            return float("nan")
        tail = kls[-max(1, len(kls) // 10) :]
        return float(np.mean(tail))
