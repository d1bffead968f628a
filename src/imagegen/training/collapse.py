"""Collapse checks run by the training stage, so a collapsed model is flagged where it happens.

- **Posterior collapse (VAE)**: the KL per image falls towards 0, the latents carry little information and the
  decoder all but ignores them. :class:`KLWatch` watches the logged ``kl`` and warns once when it falls below
  ``vae.min_kl_per_image`` after the first fifth of training (at initialisation the KL is ~0 for every VAE,
  collapsed or not). A low KL does not say what the samples look like (the mean image, or black when the
  decoder saturated); the sample check below does.
- **Mode collapse / broken samples (every family)**: :func:`sample_health` compares a fixed batch of samples
  drawn at the end of training with real training images: the share of finite values, the mean brightness
  of samples and real images (``mean_pixel``, ``real_mean_pixel``, in [0, 1]), the mean pairwise distance
  between samples over that of real images (*diversity ratio*: ~0 when every sample is the same image), the
  mean per-image pixel spread over the real one (*contrast ratio*: ~0 for flat images) and the samples' mean
  distance to the real mean image over the real images' own (*mean-image ratio*: ~0 when every sample is the
  mean image). :func:`sample_problems` names the kind: nearly all black (or white), flat, the mean image, or
  nearly identical (some other single image).

Both report into the stage's ``metrics.json`` (``kl_per_image``, ``samples.*``, ``collapse_warning``) and the
model's ``model.json`` (``collapse``: ``warning`` and the ``problems`` found), and warn through the ``imagegen``
logger (the CLI prints it on stderr). A family built from a trained model refuses one whose ``model.json``
records a collapse (:func:`imagegen.artifact.load_requirements`).
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


# Samples whose mean brightness is below this share of the real images' are "nearly all black" (and likewise
# "nearly all white" for darkness); samples closer to the real mean image than this share of the real images'
# own distance to it "tend to the mean image".
DARK_SHARE = 0.1
MEAN_IMAGE_SHARE = 0.5


def sample_health(samples: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """Finite share, brightness, diversity, contrast and mean-image ratios of float samples vs real images
    (both in [-1, 1]); see the module docstring."""
    samples = np.asarray(samples, dtype=np.float64)
    finite = np.isfinite(samples)
    clean = np.where(finite, samples, 0.0)
    real = np.asarray(real, dtype=np.float64)
    real_div = mean_pairwise_distance(real)
    real_std = float(real.reshape(len(real), -1).std(axis=1).mean())
    mean_image = real.mean(axis=0)
    real_to_mean = float(np.sqrt(np.sum((real - mean_image) ** 2, axis=(1, 2, 3))).mean()) if real.ndim == 4 else 0.0
    to_mean = float(np.sqrt(np.sum((clean - mean_image) ** 2, axis=tuple(range(1, clean.ndim)))).mean())
    return {
        "finite_fraction": float(finite.mean()) if samples.size else 0.0,
        "mean_pixel": float((clean.mean() + 1.0) / 2.0) if clean.size else float("nan"),
        "real_mean_pixel": float((real.mean() + 1.0) / 2.0) if real.size else float("nan"),
        "diversity_ratio": mean_pairwise_distance(clean) / real_div if real_div > 0 else float("nan"),
        "contrast_ratio": float(clean.reshape(len(clean), -1).std(axis=1).mean()) / real_std
        if real_std > 0
        else float("nan"),
        "mean_image_ratio": to_mean / real_to_mean if real_to_mean > 0 else float("nan"),
    }


def sample_problems(health: dict[str, float], min_diversity: float, min_contrast: float) -> list[str]:
    """Human-readable reasons the samples look collapsed, each naming its kind (empty when healthy).

    Brightness and contrast come first: black, white or flat samples are also nearly identical, and saying so
    would hide what they are. Low diversity is then told apart by where the samples sit: at the real mean image
    (the VAE's posterior collapse) or at some other single image (a GAN's mode collapse).
    """
    problems = []
    if health["finite_fraction"] < 1.0:
        problems.append(f"{100 * (1 - health['finite_fraction']):.1f}% of sample values are not finite")
    mean, real_mean = health.get("mean_pixel", float("nan")), health.get("real_mean_pixel", float("nan"))
    contrast = health["contrast_ratio"]
    look = f"mean pixel {mean:.3g} vs {real_mean:.3g} in real images, contrast ratio {contrast:.3g}"
    if mean < DARK_SHARE * real_mean:
        problems.append(f"samples are nearly all black ({look})")
    elif 1.0 - mean < DARK_SHARE * (1.0 - real_mean):
        problems.append(f"samples are nearly all white ({look})")
    elif contrast < min_contrast:
        problems.append(
            f"samples are flat (per-image pixel spread: contrast ratio {contrast:.3g} < "
            f"train.min_sample_contrast={min_contrast:g}; mean pixel {mean:.3g} vs {real_mean:.3g} in real images)"
        )
    elif health["diversity_ratio"] < min_diversity:
        diversity = f"diversity ratio {health['diversity_ratio']:.3g} < train.min_sample_diversity={min_diversity:g}"
        near_mean = health.get("mean_image_ratio", float("nan"))
        if near_mean < MEAN_IMAGE_SHARE:
            problems.append(
                f"samples tend to the mean image ({diversity}; distance to the real mean image {near_mean:.3g} "
                "of real images')"
            )
        else:
            problems.append(f"samples are nearly identical ({diversity})")
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
                "the latents carry little information (the sample check at the end says what samples look like)",
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
